"""Entry point of rule train_medusa: Medusa heads under DeepSpeed (one process per rank).

    python -m spadec.launch --gpus N --backend deepspeed -- workflow_scripts/train_medusa.py \
        --config medusa.json --target TARGET_DIR --data SHARD [SHARD ...] --ckpt DIR --out DIR
"""

from spadec.eagle.train import script_main
from spadec.medusa.train import train_heads

script_main(__doc__, train_heads, stage="medusa", output="heads")
