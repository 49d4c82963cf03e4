# Copy to launchers/cluster_env.sh (or point VIDGPT_CLUSTER_ENV at it): sourced by train_multinode.sh.
# Cluster-specific network settings live here, not in the launcher. Examples:
# export NCCL_SOCKET_IFNAME=ib0
# export NCCL_IB_HCA=mlx5
# export FI_PROVIDER=efa            # AWS EFA
# export NCCL_DEBUG=WARN
# module load cuda/12.4
