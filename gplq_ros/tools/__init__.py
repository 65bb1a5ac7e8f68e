"""Console scripts (gplq_assets, gplq_vocab, gplq_demo)."""
