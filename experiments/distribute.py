"""tf.distribute strategies for the experiment runner: which strategy,
this process's role in its cluster, and how a global batch is cut into
per-replica shares.
"""
import tensorflow as tf


def _split_cpu(n):
    """Makes the first CPU appear as `n` logical devices (before TF starts)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if n == (len(current) if current else 1):
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as e:
        raise ValueError(f"cpu_replicas={n} must be set before TensorFlow starts (the "
                         "runtime is already initialised in this process); run "
                         "`python -m experiments.stn_classify` in a fresh process") from e


def make_strategy(cfg):
    """The tf.distribute strategy named by cfg.strategy.

    default: TensorFlow's default (no-op) strategy, one replica. mirrored:
    MirroredStrategy over this machine's GPUs, or with none over
    cfg.cpu_replicas logical CPU devices. multiworker:
    MultiWorkerMirroredStrategy, the cluster and this process's role read
    from the TF_CONFIG environment variable (no TF_CONFIG: one local worker).
    mirrored with CPU replicas and multiworker must be created before
    TensorFlow's runtime starts (the runner does so before building data).
    """
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        _split_cpu(cfg.cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cfg.cpu_replicas]
        return tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if cfg.strategy == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be default, mirrored or multiworker; got {cfg.strategy!r}")


def worker_role(strategy):
    """(task type, task index, is_chief) of this process in its cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    if task_type is None:
        return None, 0, True
    cluster = resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                     and "chief" not in cluster)
    return task_type, task_id, chief


def split_over_replicas(strategy, array):
    """One global batch -> each replica's contiguous share, in replica order.

    Replica r of R takes rows [r n // R, (r + 1) n // R): the replicas
    together see exactly the batch a single process would see, whatever R.
    Every worker holds the same arrays (the data are built from data_seed),
    so it cuts its own replicas' shares locally.
    """
    n, replicas = len(array), strategy.num_replicas_in_sync

    def share(ctx):
        r = ctx.replica_id_in_sync_group
        return tf.constant(array[r * n // replicas:(r + 1) * n // replicas])

    return strategy.experimental_distribute_values_from_function(share)


def worker_count(strategy):
    """Number of worker processes (chief included) in this strategy's cluster; 1 without one."""
    if worker_role(strategy)[0] is None:
        return 1
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))
