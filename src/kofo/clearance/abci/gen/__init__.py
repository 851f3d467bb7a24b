"""Generated from CometBFT v0.38.17 protos."""
