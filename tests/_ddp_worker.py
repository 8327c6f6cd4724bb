"""Entry point for the DDP test under torchrun: train through the CLI's config, dump what each rank ended with."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from bayestensor.cli.main import build_parser
from bayestensor.cli.train import build_config
from bayestensor.experiments import trainer


def main() -> None:
    dump, argv = sys.argv[1], sys.argv[2:]
    args = build_parser().parse_args(["train", *argv])
    models = []
    original = trainer.make_ard

    def spy(model, *a, **k):  # remember the model to checksum its final weights
        models.append(model)
        return original(model, *a, **k)

    trainer.make_ard = spy
    report = trainer.train(build_config(args))
    state = models[-1].state_dict()
    digest = hashlib.sha256(b"".join(state[k].detach().numpy().tobytes() for k in sorted(state))).hexdigest()
    out = {
        "world_size": int(os.environ["WORLD_SIZE"]),
        "ranks": {k: v["final_ranks"] for k, v in report["layers"].items()},
        "params": report["params"],
        "checksum": digest,
    }
    with open(f"{dump}.{os.environ['RANK']}.json", "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
