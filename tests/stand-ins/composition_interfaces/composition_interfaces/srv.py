"""TEST-ONLY placeholders for composition_interfaces.srv (see the package docstring): the names
launch_ros's LoadComposableNodes refers to at import time; using any of them raises."""


class _StandIn:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f'composition_interfaces.srv.{type(self).__qualname__} is a test-only stand-in installed by gplq_ros\'s '
            '`make setup` (the real composition_interfaces is not on PyPI): composable nodes / '
            'LoadComposableNodes need the real package from a ROS 2 install')


def _service(name):
    request = type('Request', (_StandIn,), {'__qualname__': f'{name}.Request'})
    response = type('Response', (_StandIn,), {'__qualname__': f'{name}.Response'})
    return type(name, (_StandIn,), {'Request': request, 'Response': response, '__qualname__': name})


LoadNode = _service('LoadNode')
UnloadNode = _service('UnloadNode')
ListNodes = _service('ListNodes')
