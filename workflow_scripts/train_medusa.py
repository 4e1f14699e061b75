"""Entry point of rule train_medusa: Medusa heads under DeepSpeed (one process per rank).

    python -m spadec.launch --gpus N --backend deepspeed -- workflow_scripts/train_medusa.py \
        --config medusa.json --target TARGET_DIR --data SHARD [SHARD ...] --ckpt DIR --out DIR
"""

import argparse
from pathlib import Path

from spadec.io import read_json
from spadec.logs import setup_logging
from spadec.medusa.train import train_heads

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved medusa settings (JSON)")
parser.add_argument("--target", required=True, help="target model directory (HF)")
parser.add_argument("--data", required=True, nargs="+", help="EAGLE data shard directories")
parser.add_argument("--ckpt", required=True, help="resumable training state (not an output)")
parser.add_argument("--out", required=True, help="heads output directory")
parser.add_argument(
    "--ds-config",
    default=str(REPO / "configs" / "deepspeed" / "zero2.json"),
    help="DeepSpeed config template (default: configs/deepspeed/zero2.json)",
)
# DeepSpeed's launcher adds --local_rank=N unless told --no_local_rank; the rank is read
# from the environment either way.
parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
args = parser.parse_args()

setup_logging()
train_heads(read_json(args.config), args.target, args.data, args.out, args.ckpt, args.ds_config)
