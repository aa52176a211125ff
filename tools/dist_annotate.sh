#!/usr/bin/env bash
# Usage: bash tools/dist_annotate.sh NUM_PROCS IMAGES --out FILE [annotate.py args...]
# Shards the images over NUM_PROCS processes per node (torchrun); rank 0 merges.
# Uses NCCL on GPUs (--device cuda), gloo on CPU. Multi-node: set NNODES,
# NODE_RANK, MASTER_ADDR and PORT, and use a --work-dir every node can reach.
NPROCS=$1
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29510}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}

PYTHONPATH="$DIR/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR \
    --nproc_per_node=$NPROCS --master_port=$PORT \
    "$DIR/annotate.py" --launcher pytorch "${@:2}"
