"""The benchmarks' harness: frameworks and devices, the step runner, timing, checks.

The groups (``bench_stn.py``, ``bench_dsnt.py``) say what they compute; this
module says how it is run and timed, the same for every group:

* ``setup_env`` imports the frameworks (TensorFlow, and PyTorch, dsntnn and
  kornia where installed), sets their thread counts and picks the devices
  (``Device``).
* ``Env.tf_step`` and ``Env.torch_step`` are the one step runner: a step is
  forward + backward, returns its loss as well as its gradients (a step
  returning only the gradients lets TensorFlow prune a forward pass whose
  output its backward does not read, which no model can do), and waits for
  its device before it returns. The runner also computes the forward's
  output once at build time, for ``check_same``.
* ``check_same``: a group's implementations must compute the same thing, on
  the benchmark's own inputs, or the run stops (a benchmark never compares
  different work).
* ``measure_case`` times a case: every implementation is warmed up (the
  first call traces / compiles and is never timed), then ``--repeats`` rounds
  time one step of each implementation in turn, the order rotated every
  round (interleaved, so a noisy neighbour hurts all alike). Each timed call
  comes right after ``--rewarm`` (default 1) untimed calls of the same
  implementation: the first call after another framework's step pays for the
  switch (its thread pool woken from sleep, the other's OpenMP threads still
  spinning, caches refilled), which no training loop pays; ``--rewarm 0``
  times the switch as well. Reported: median and minimum seconds, and the
  ratio to the reference = median over rounds of (time / reference time in
  the same round).
* ``check_targets``: the ratios against the bounds the CLI lists.

Devices (``--device``): on a machine with a GPU, TF runs on ``GPU:0`` and
torch on ``cuda`` (``auto``, the default, uses each framework's GPU where it
sees one); every step waits for its device before the clock is read
(``torch.cuda.synchronize``; TF reads back the loss, then
``tf.test.experimental.sync_devices``). Only placement and waiting differ
between devices, never the maths. Not yet run on a GPU: the machines of
this project have none.

TF and PyTorch use the same number of threads (``--threads``; by default the
CPUs this process may use, which is TF's own default).
"""

import statistics
import time


class Device:
    """Where the steps run: TF's device and torch's, and how to wait for them.

    ``which`` is ``"auto"`` (each framework's GPU if it sees one), ``"cpu"``
    or ``"gpu"`` (stops unless TF, and torch where installed, see a GPU).
    """

    def __init__(self, tf, torch, which="auto"):
        tf_gpu = bool(tf.config.list_physical_devices("GPU"))
        torch_gpu = torch is not None and torch.cuda.is_available()
        if which == "gpu" and not (tf_gpu and (torch is None or torch_gpu)):
            raise SystemExit(f"--device gpu: no GPU (TensorFlow sees one: {tf_gpu}; "
                             f"torch sees one: {torch_gpu})")
        self.tf_gpu = tf_gpu and which != "cpu"
        self.torch_gpu = torch_gpu and which != "cpu"
        self.tf_device = "GPU:0" if self.tf_gpu else "CPU:0"
        self.torch_device = "cuda" if self.torch_gpu else "cpu"
        self._tf, self._torch = tf, torch

    def tf_wait(self, results):
        """Waits for a TF step: its loss read back (and, on a GPU, the device synced)."""
        results[0].numpy()
        if self.tf_gpu:
            self._tf.test.experimental.sync_devices()

    def torch_wait(self):
        if self.torch_gpu:
            self._torch.cuda.synchronize()


class Impl:
    """One implementation of one case: ``step()`` runs forward + backward and waits."""

    def __init__(self, name, framework, step, backward=True, note=""):
        self.name, self.framework, self.step = name, framework, step
        self.backward, self.note = backward, note


class _Kernels:
    """``with _Kernels(sc, False):`` runs and traces under ``use_kernels(False)``, then restores."""

    def __init__(self, spatial_convention, enabled):
        self.sc, self.enabled = spatial_convention, enabled

    def __enter__(self):
        self.old = self.sc.kernels_enabled()
        self.sc.use_kernels(self.enabled)

    def __exit__(self, *exc):
        self.sc.use_kernels(self.old)


class Env:
    """The frameworks, our modules and the devices a run uses (``setup_env`` makes it).

    Attributes: ``np``, ``tf``, ``stn``, ``dsnt``, ``spatial_convention``;
    ``torch``, ``dsntnn``, ``kornia_tps`` (``kornia.geometry.transform``) or
    None where not installed, with the reason in ``torch_missing``,
    ``dsntnn_missing``, ``kornia_missing``; ``kornia_version``; ``threads``;
    ``device`` (a ``Device``).
    """

    def tf_tensor(self, array):
        """A constant on the TF device."""
        with self.tf.device(self.device.tf_device):
            return self.tf.constant(array)

    def torch_tensor(self, array, grad=False):
        """A tensor on the torch device (a copy: NumPy views such as transposes are fine)."""
        return self.torch.tensor(self.np.ascontiguousarray(array), device=self.device.torch_device,
                                 requires_grad=grad)

    def tf_step(self, fn, args, wrt, kernels=True):
        """The TF step runner: ``fn(*args) -> (loss, out)``, gradients of ``loss`` to ``args[wrt]``.

        The step is ``fn`` under a ``tf.GradientTape`` in a plain
        ``tf.function`` (the default a user gets) returning ``[loss, *grads]``;
        with ``wrt`` empty it is forward only and ``loss`` may be any output.
        Its first call, which traces it, is made here (never timed), under
        ``use_kernels(kernels)`` (False: the direct maths with TF's
        autodiff); later calls reuse that trace. Returns ``(run, out)``:
        the step, which waits for the device, and ``out`` as NumPy (a
        nested structure of arrays, from a forward-only call traced under the
        same setting) for the build-time check.
        """
        tf, dev = self.tf, self.device

        @tf.function
        def step(*xs):
            with tf.device(dev.tf_device):  # placed when traced: nothing added per call
                if not wrt:
                    return [fn(*xs)[0]]
                with tf.GradientTape() as tape:
                    tape.watch([xs[i] for i in wrt])
                    loss, _ = fn(*xs)
                return [loss] + tape.gradient(loss, [xs[i] for i in wrt])

        def run():
            results = step(*args)
            dev.tf_wait(results)
            return results

        with _Kernels(self.spatial_convention, kernels), tf.device(dev.tf_device):
            out = tf.nest.map_structure(lambda t: t.numpy(),
                                        tf.function(lambda *xs: fn(*xs)[1])(*args))
            run()
        return run, out

    def tf_cotangent_loss(self, forward):
        """``fn`` for ``tf_step``: ``out = forward(*xs[:-1])``, loss ``sum(out * xs[-1])``."""
        def fn(*xs):
            out = forward(*xs[:-1])
            return self.tf.reduce_sum(out * xs[-1]), out
        return fn

    def torch_cotangent_loss(self, forward, cotangent):
        """``fn`` for ``torch_step``: ``out = forward()``, loss ``sum(out * cotangent)``."""
        def fn():
            out = forward()
            return (out * cotangent).sum(), out
        return fn

    def torch_step(self, fn, wrt):
        """The torch step runner: ``fn() -> (loss, out)``, gradients of ``loss`` to ``wrt``.

        The step returns ``[loss, *grads]`` and waits for the device.
        Returns ``(run, out)``: the step, and ``out`` from a call under
        ``torch.no_grad()``, as NumPy (a nested structure), for the check.
        """
        torch, dev = self.torch, self.device

        def run():
            loss, _ = fn()
            grads = torch.autograd.grad(loss, wrt)
            dev.torch_wait()
            return [loss, *grads]

        with torch.no_grad():
            _, out = fn()
        return run, _to_numpy(out)


def _to_numpy(out):
    if isinstance(out, (tuple, list)):
        return type(out)(_to_numpy(o) for o in out)
    return out.detach().cpu().numpy()


def setup_env(threads=None, device="auto"):
    """Imports the frameworks and our modules, sets threads and devices; returns an ``Env``.

    ``threads``: TF's intra- and inter-op threads and torch's (None: the
    CPUs this process may use, TF's default, which TF then keeps).
    """
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    import bench_probes
    import dsnt
    import spatial_convention
    import stn

    env = Env()
    env.np, env.tf = np, tf
    env.threads = threads or bench_probes.usable_cpus()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    env.stn, env.dsnt, env.spatial_convention = stn, dsnt, spatial_convention

    env.torch = env.dsntnn = env.kornia_tps = env.kornia_version = None
    env.torch_missing = env.dsntnn_missing = env.kornia_missing = None
    try:
        import torch
        torch.set_num_threads(env.threads)
        env.torch = torch
    except ImportError as e:
        env.torch_missing = f"torch not installed ({e})"
    try:
        import dsntnn
        env.dsntnn = dsntnn
        if not hasattr(dsntnn, "__version__"):
            try:
                from importlib.metadata import version
                dsntnn.__version__ = version("dsntnn")
            except Exception:  # noqa: BLE001 - version is only reported
                dsntnn.__version__ = "unknown"
    except ImportError as e:
        env.dsntnn_missing = f"dsntnn not installed ({e})"
    if env.torch is not None:
        try:
            import kornia
            import kornia.geometry.transform as kornia_tps
            env.kornia_tps, env.kornia_version = kornia_tps, kornia.__version__
        except ImportError as e:
            env.kornia_missing = (f"kornia not installed ({e}); not among the project's "
                                  f"extras: pip install kornia")
    env.device = Device(tf, env.torch, device)
    return env


def check_same(what, ours, ref, atol=1e-4, rtol=0.0, scale=None):
    """Asserts two forward results agree: |ours - ref| <= atol * scale + rtol * |ref|.

    ``scale`` defaults to max(1, max |ref|). Raised at build time, so that a
    benchmark never times two implementations computing different things.
    """
    import numpy as np
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"{what}: shapes differ, {ours.shape} vs {ref.shape}")
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    err = np.abs(ours - ref)
    bound = atol * scale + rtol * np.abs(ref)
    if not np.all(err <= bound):
        raise AssertionError(f"{what}: the implementations compute different things "
                             f"(max |difference| {err.max():.3g}, tolerance {atol * scale:.3g} "
                             f"+ {rtol} x |reference|)")


def time_case(impls, repeats, warmup, rewarm):
    """Seconds per timed step, ``{name: [per round]}``, interleaved and rotated per round."""
    for impl in impls:
        for _ in range(max(warmup, 1)):  # at least once: tracing is never timed
            impl.step()
    times = {impl.name: [] for impl in impls}
    n = len(impls)
    for r in range(repeats):
        for i in range(n):
            impl = impls[(i + r) % n]
            for _ in range(rewarm):
                impl.step()
            t0 = time.perf_counter()
            impl.step()
            times[impl.name].append(time.perf_counter() - t0)
    return times


def paired_ratio(num, den):
    """Median over rounds of num / den, round by round."""
    return statistics.median(a / b for a, b in zip(num, den))


def measure_case(impls, reference, second, repeats, warmup, rewarm, probe=None):
    """Times (and, with a ``probe``, measures the memory of) one case's implementations.

    ``reference``: the implementation of the "x ref" ratios; ``second``: that
    of the second ratio column, if any. Returns ``(reference or None, rows)``,
    one row (a dict, as the JSON has it) per implementation.
    """
    times = time_case(impls, repeats, warmup, rewarm)
    ref = reference if reference in times else None
    rows = []
    for impl in impls:
        t = times[impl.name]
        rows.append({
            "impl": impl.name,
            "framework": impl.framework,
            "backward": impl.backward,
            "note": impl.note,
            "median_s": statistics.median(t),
            "min_s": min(t),
            "times_s": t,
            "ratio_vs_reference": paired_ratio(t, times[ref]) if ref else None,
            "ratio_vs_second": paired_ratio(t, times[second]) if second in times else None,
            "peak_mem_mib": probe.measure(impl.step, impl.framework) if probe else None,
        })
    return ref, rows


def check_targets(targets, results):
    """Each target ``(group, shape, impl, reference, bound, how)`` against the results.

    ``how`` is ``"le"`` (time(impl) / time(reference) <= bound) or
    ``"speedup"`` (time(reference) / time(impl) >= bound); a target whose
    case did not run is left out, one whose implementations did not both run
    has ``holds`` None.
    """
    checks = []
    for group, shape, impl, ref, bound, how in targets:
        res = next((r for r in results if r["group"] == group and tuple(r["shape"]) == shape), None)
        if res is None:
            continue
        rows = {row["impl"]: row for row in res["rows"]}
        check = {"group": group, "shape": list(shape), "impl": impl, "reference": ref,
                 "bound": bound, "how": how}
        if impl not in rows or ref not in rows:
            checks.append(dict(check, target=f"{group} {shape} {impl} vs {ref}", holds=None,
                               value=None))
            continue
        ratio = paired_ratio(rows[impl]["times_s"], rows[ref]["times_s"])
        if how == "le":
            text = f"{group} {shape}: {impl} / {ref} = {ratio:.2f}x (target <= {bound}x)"
            value, holds = ratio, ratio <= bound
        else:
            value = 1.0 / ratio
            text = f"{group} {shape}: {impl} is {value:.2f}x faster than {ref} (target >= {bound}x)"
            holds = value >= bound
        checks.append(dict(check, target=text, holds=holds, value=value))
    return checks
