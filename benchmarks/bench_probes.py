"""Machine description and peak-memory probes of the benchmarks (``bench.py``).

Peak memory (``--memory``, on by default except in ``--tiny``): one warmed-up
step, MiB above what was in use before it (inputs excluded, outputs included).

* TF rows: the TF allocator's peak, ``tf.config.experimental.reset_memory_stats``
  then ``get_memory_info(dev)["peak"] - ["current"]``, on ``GPU:0`` when the
  run is on a GPU, else ``CPU:0`` (TF 2.21 tracks its CPU allocator too; XLA
  buffers included). It counts allocator bytes, rounded up to the
  allocator's bins.
* torch rows: on a GPU, the growth of ``torch.cuda.max_memory_allocated``
  after ``torch.cuda.reset_peak_memory_stats``; on CPU (torch keeps no CPU
  allocator statistics) the growth of the process's peak resident set: freed
  heap returned to the OS (``malloc_trim``), peak RSS reset
  (``/proc/self/clear_refs``), then ``VmHWM - VmRSS`` from
  ``/proc/self/status``.

The two CPU measures are not identical (allocator bytes vs resident pages), so
compare memory across frameworks only roughly; "n/a" where neither works.
The GPU measures are both allocator bytes. Not yet run on a GPU.

Imports only the standard library: the frameworks come in through the
harness's environment.
"""

import gc
import os
import platform


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus():
    """The CPUs this process may run on (its affinity), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssProbe:
    """Peak-RSS growth over one call, via /proc/self/clear_refs (Linux >= 4.0)."""

    def __init__(self):
        self.ok = False
        try:
            import ctypes
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.ok = _proc_status_kib("VmHWM") is not None
        except OSError:
            self.ok = False

    def measure(self, fn):
        if not self.ok:
            return None
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        fn()
        peak = _proc_status_kib("VmHWM")
        if before is None or peak is None:
            return None
        return max(peak - before, 0) / 1024.0


class MemoryProbe:
    """Peak memory of one warmed-up step, per framework, on the run's devices.

    ``device`` is the harness's ``Device``: which TF device and torch device
    the steps run on. ``measure(fn, framework)`` calls ``fn`` (a step, which
    waits for its device before returning) once and returns MiB, or None.
    """

    def __init__(self, tf, torch, device):
        self.tf, self.torch = tf, torch
        self.tf_device = device.tf_device
        self.torch_cuda = torch is not None and device.torch_device == "cuda"
        self.rss = RssProbe()
        try:
            tf.config.experimental.reset_memory_stats(self.tf_device)
            tf.config.experimental.get_memory_info(self.tf_device)
            self.tf_ok = True
        except (ValueError, RuntimeError, AttributeError):
            self.tf_ok = False

    def methods(self):
        tf_m = (f"TF rows: TF allocator peak on {self.tf_device} during the step above its "
                f"current use before (reset_memory_stats + get_memory_info)"
                if self.tf_ok else
                "TF rows: peak-RSS growth (see torch)" if self.rss.ok else "TF rows: n/a")
        if self.torch_cuda:
            t_m = "torch rows: torch.cuda.max_memory_allocated growth during the step"
        elif self.rss.ok:
            t_m = ("torch rows: growth of the process peak RSS during the step (malloc_trim, "
                   "VmHWM reset via /proc/self/clear_refs, VmHWM - VmRSS before)")
        else:
            t_m = "torch rows: n/a"
        return tf_m + "; " + t_m + "; MiB, one warmed-up step, inputs excluded"

    def measure(self, fn, framework):
        gc.collect()
        if framework == "torch":
            if self.torch_cuda:
                t = self.torch
                t.cuda.synchronize()
                t.cuda.reset_peak_memory_stats()
                base = t.cuda.memory_allocated()
                fn()
                return (t.cuda.max_memory_allocated() - base) / 2**20
            return self.rss.measure(fn)
        if not self.tf_ok:
            return self.rss.measure(fn)
        exp = self.tf.config.experimental
        exp.reset_memory_stats(self.tf_device)
        base = exp.get_memory_info(self.tf_device)["current"]
        fn()
        return (exp.get_memory_info(self.tf_device)["peak"] - base) / 2**20


def machine_info(env, seed_stn=None):
    """What the run ran on, as a dict (the JSON's ``machine``).

    ``env`` is the harness's environment; ``seed_stn`` says which seed STN
    was loaded, if any.
    """
    tf, torch = env.tf, env.torch
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads": env.threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_devices": [d.name for d in tf.config.list_logical_devices()],
        "tf_gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tf_device": env.device.tf_device,
        "torch": getattr(torch, "__version__", None),
        "torch_device": env.device.torch_device if torch is not None else None,
        "dsntnn": getattr(env.dsntnn, "__version__", None) if env.dsntnn else None,
        "seed_stn": seed_stn,
        "kornia": env.kornia_version,
        "jit_env": {v: os.environ.get(v, "(unset: default)") for v in ("SPATIAL_JIT", "STN_JIT")},
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def machine_line(info):
    """``machine_info`` as the one line the table starts with."""
    dev = info["tf_device"]
    if info["tf_gpus"]:
        dev += " (GPUs: " + ", ".join(info["tf_gpus"]) + ")"
    la = info["load_average_start"]
    load = f"; load average {la[0]:.2f}" if la else ""
    return (f"machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs "
            f"({info['usable_cpus']} usable), {info['threads']} threads for TF and torch; "
            f"TF device {dev}; {info['platform']}; Python {info['python']}; "
            f"TensorFlow {info['tensorflow']}; PyTorch {info['torch'] or 'not installed'} "
            f"({info['torch_device'] or '-'}); dsntnn {info['dsntnn'] or 'not installed'}; "
            f"seed stn {info['seed_stn'] or 'not installed'}; "
            f"kornia {info.get('kornia') or 'not installed'}{load}")
