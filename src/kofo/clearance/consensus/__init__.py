"""How blocks reach the ledger app: ``solo`` (in-process producer) or CometBFT over ABCI."""
