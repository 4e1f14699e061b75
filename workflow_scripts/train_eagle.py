"""Entry point of rule train_eagle: the EAGLE head under DeepSpeed (one process per rank).

    python -m spadec.launch --gpus N --backend deepspeed -- workflow_scripts/train_eagle.py \
        --config eagle.json --target TARGET_DIR --data SHARD [SHARD ...] --ckpt DIR --out DIR
"""

from spadec.eagle.train import script_main, train_head

script_main(__doc__, train_head, stage="eagle", output="head")
