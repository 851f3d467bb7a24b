"""Bitcoin-like UTXO chains (Bitcoin, Litecoin): HTLC script, transactions, wallet, adapter."""

from kofo.settlement.chains.bitcoin._secp import ensure_secp256k1

ensure_secp256k1()
