"""Regenerate the ABCI protobuf modules in ``kofo/clearance/abci/gen`` from CometBFT's protos.

    python -m kofo.clearance.abci.regenerate

Needs Go (for ``go mod download``) and ``grpcio-tools`` (dev). The .proto files come from the
pinned CometBFT module and the gogoproto module it depends on, both read from Go's module cache;
they are copied to a temporary tree (the cache is read-only), compiled with ``protoc`` from
grpcio-tools, and the generated absolute imports (``from tendermint...``) are rewritten to live
under this package so they cannot clash with any other ``tendermint`` package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COMETBFT_MODULE = "github.com/cometbft/cometbft@v0.38.17"
GOGOPROTO_MODULE = "github.com/cosmos/gogoproto@v1.7.0"
PROTOS = [
    "tendermint/abci/types.proto",
    "tendermint/crypto/keys.proto",
    "tendermint/crypto/proof.proto",
    "tendermint/types/params.proto",
    "tendermint/types/types.proto",
    "tendermint/types/validator.proto",
    "tendermint/types/evidence.proto",
    "tendermint/version/types.proto",
    "gogoproto/gogo.proto",
]
GEN = Path(__file__).with_name("gen")
PACKAGE = "kofo.clearance.abci.gen"


def _module_dir(module: str) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", module], check=True, capture_output=True, text=True
    ).stdout
    return Path(json.loads(out)["Dir"])


def generate(target: Path = GEN) -> None:
    from grpc_tools import protoc  # dev dependency, only needed here

    comet = _module_dir(COMETBFT_MODULE) / "proto"
    gogo = _module_dir(GOGOPROTO_MODULE)
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        out = Path(tmp) / "out"
        out.mkdir()
        for rel in PROTOS:
            origin = (gogo if rel.startswith("gogoproto/") else comet) / rel
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, src / rel)
        args = [
            "protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        (target / "__init__.py").write_text('"""Generated from CometBFT v0.38.17 protos."""\n')
        for py in sorted([*out.rglob("*_pb2.py"), *out.rglob("*_pb2.pyi")]):
            gen_path = py.relative_to(out)
            dest = target / gen_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            for package in gen_path.parents:
                if str(package) != ".":
                    (target / package / "__init__.py").touch()
            text = re.sub(
                r"^from (tendermint|gogoproto)([.\w]*) import",
                rf"from {PACKAGE}.\1\2 import",
                py.read_text(),
                flags=re.M,
            )
            dest.write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GEN)
