"""GPLQ calibration: losses, calibration loop, weight PTQ, metrics (calibration issue)."""
