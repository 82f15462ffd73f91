"""Device mesh, logical-axis rules and NamedShardings for the train state, batches and sampler.

Mesh axes are ("data", "fsdp", "tensor"); `config.mesh = (data, fsdp, tensor)` with at most one
-1 meaning "all remaining devices" (default (1, -1, 1): FSDP over every device).

  data    pure data parallelism: the batch is split, parameters are replicated.
  fsdp    the batch is split AND parameters / optimizer moments are split on their `embed` dim
          (ZeRO-3 style: XLA all-gathers each weight where it is used).
  tensor  Megatron-style model parallelism over heads / kv_heads / mlp / vocab.

Every model parameter carries `logical_axes` metadata (caopd_jax.models.transformer); `RULES`
maps each logical name to mesh axes. A dimension is sharded only if its size divides the product
of the mesh axes it maps to; otherwise trailing mesh axes are dropped until it does (in the end
the dimension is replicated) and a log line says so. Adam moments carry the same metadata as the
parameters (optax maps over the nnx.State), so they mirror the parameter shardings; the EMA
teacher (same graphdef) too; scalars (step, counts) and the RNG are replicated.
`check_replicated` warns about large arrays that end up fully replicated on a mesh that could
have split them.

    mesh = make_mesh(config.mesh)
    state_sh = state_shardings(state, mesh)            # a pytree prefix of `state`
    state = place(state, state_sh)
    step = jit_train_step(step_fn, mesh, state_sh, batch_shardings(batch, mesh))
    state, metrics = step(state, shard_batch(batch, mesh))
    out = shard_sample(graphdef, params, prompt, valid, key, cfg, mesh)   # the sharded sampler
"""

import functools
import logging
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


MESH_AXES = ("data", "fsdp", "tensor")
BATCH = "batch"  # the logical name of the leading (example) dimension of every batch array

# logical axis name -> mesh axis (or tuple of mesh axes, major to minor), or None (replicate).
RULES = (
    (BATCH, ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # the stacked layer axis of scanned models (caopd_jax.models)
)
# Fully replicated arrays at least this big are reported by `check_replicated`.
LARGE_BYTES = 1 << 20

log = logging.getLogger(__name__)
_logged = set()


def _log_once(key, msg, *args, level=logging.INFO):
  if key not in _logged:
    _logged.add(key)
    log.log(level, msg, *args)


# ------------------------------------------------------------------------------------- mesh


def mesh_shape(spec: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 in `spec` (data, fsdp, tensor) to the remaining devices; checks the total."""
  spec = tuple(int(s) for s in spec)
  if len(spec) != len(MESH_AXES):
    raise ValueError(f"mesh must have {len(MESH_AXES)} entries {MESH_AXES}, got {spec}.")
  if spec.count(-1) > 1 or any(s == 0 or s < -1 for s in spec):
    raise ValueError(f"mesh entries must be positive with at most one -1, got {spec}.")
  known = math.prod(s for s in spec if s != -1)
  if -1 in spec:
    if num_devices % known:
      raise ValueError(f"mesh {spec}: {num_devices} devices are not divisible by {known}.")
    spec = tuple(num_devices // known if s == -1 else s for s in spec)
  if math.prod(spec) != num_devices:
    raise ValueError(f"mesh {spec} needs {math.prod(spec)} devices, there are {num_devices} "
                     "(use -1 for 'the rest').")
  return spec


def make_mesh(spec: Sequence[int] | Mesh | None = (1, -1, 1), devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

  Axes are Auto (GSPMD propagation; the model code has no explicit-sharding annotations).
  On CPU the devices are laid out in (process, id) order, so each process owns a contiguous
  block of the batch; on accelerators the layout follows the physical topology
  (mesh_utils.create_device_mesh), and over several slices (multi-slice TPU) the slices go on
  the data axis (create_hybrid_device_mesh).
  """
  if isinstance(spec, Mesh):
    return spec
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape((1, -1, 1) if spec is None else spec, len(devices))
  if devices[0].platform == "cpu":
    devices.sort(key=lambda d: (d.process_index, d.id))
    array = np.asarray(devices, dtype=object).reshape(shape)
  else:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    slices = sorted({getattr(d, "slice_index", 0) for d in devices})
    if devices[0].platform == "tpu" and len(slices) > 1 and shape[0] % len(slices) == 0:
      per_slice = (shape[0] // len(slices),) + shape[1:]
      array = mesh_utils.create_hybrid_device_mesh(
          per_slice, (len(slices), 1, 1), devices, allow_split_physical_axes=True)
    else:
      array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(x, logical_axes, rules=RULES):
  """`x` constrained to the sharding its logical axes give on the mesh set by `jax.set_mesh`
  (train loop, planner, sharded sampler); unchanged outside such a context. Declares layouts
  GSPMD would otherwise have to guess, e.g. the sampler's KV cache (batch over data x fsdp)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))


# ------------------------------------------------------------------------------------ rules


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=RULES, name: str = "") -> P:
  """PartitionSpec for an array whose dims are named `logical_axes` (see module docstring).

  Mesh axes of size 1 are left out; a mesh axis is used at most once per array; a dimension
  that does not divide its mesh axes' product drops trailing mesh axes until it does.
  """
  table = dict(rules)
  if len(logical_axes) != len(shape):
    raise ValueError(f"{name}: logical_axes {tuple(logical_axes)} do not match shape "
                     f"{tuple(shape)}.")
  used, spec = set(), []
  for dim, (logical, size) in enumerate(zip(logical_axes, shape)):
    if logical is not None and logical not in table:
      raise ValueError(f"No sharding rule for logical axis {logical!r} ({name}); rules cover "
                       f"{sorted(table)}.")
    wanted = tuple(a for a in _as_tuple(table.get(logical)) if mesh.shape[a] > 1)
    axes = tuple(a for a in wanted if a not in used)
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    if axes != wanted:  # logged once per (axis, size, mesh axes), with the first array hit
      sizes = "x".join(str(mesh.shape[a]) for a in wanted)
      reason = ("is not divisible by" if all(a not in used for a in wanted) else
                "cannot reuse (already taken by another dim)")
      _log_once(("divisible", logical, size, wanted, sizes, axes),
                "sharding: %s dim %d (%s, size %d) %s mesh axes %s (%s); sharded over %s "
                "instead (same for every %s dim of size %d).", name or "array", dim, logical,
                size, reason, wanted, sizes, axes or "nothing (replicated)", logical, size)
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _logical_axes(x):
  if not _is_variable(x):
    return None
  return x.get_metadata().get("logical_axes")


def _value(x):
  return x.get_value() if _is_variable(x) else x


def tree_shardings(tree, mesh: Mesh, rules=RULES):
  """A pytree prefix of `tree` with a NamedSharding per array (nnx.Variables count as leaves).

  Variables with `logical_axes` metadata are sharded by the rules; every other leaf (scalars,
  RNG key data, optimizer counts) is replicated.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
  out = []
  for path, leaf in leaves:
    axes = _logical_axes(leaf)
    shape = np.shape(_value(leaf))
    if axes is None:
      out.append(replicated(mesh))
    else:
      out.append(NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules,
                                                     name=jax.tree_util.keystr(path))))
  return jax.tree.unflatten(treedef, out)


def state_shardings(state, mesh: Mesh, rules=RULES, check: bool = True):
  """Shardings for a TrainState (params, Adam moments, EMA teacher by metadata; rest replicated).

  With `check`, large arrays that stay fully replicated are reported (`check_replicated`).
  """
  shardings = tree_shardings(state, mesh, rules)
  if check:
    check_replicated(state, shardings, mesh)
  return shardings


def _pairs(tree, shardings):
  """[(path, array-like, sharding)] over the leaves of `tree` (Variables unwrapped)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]
  flat_sh = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  if len(leaves) != len(flat_sh):
    raise ValueError(f"{len(leaves)} arrays but {len(flat_sh)} shardings.")
  return [(jax.tree_util.keystr(p), _value(x), s) for (p, x), s in zip(leaves, flat_sh)]


def describe(tree, shardings) -> list[tuple[str, tuple, str]]:
  """[(path, shape, partition spec)] for logging / tests."""
  return [(p, tuple(np.shape(x)), str(s.spec)) for p, x, s in _pairs(tree, shardings)]


def check_replicated(tree, shardings, mesh: Mesh, min_bytes: int = LARGE_BYTES) -> list[str]:
  """Paths of arrays >= min_bytes that are fully replicated although the mesh has fsdp/tensor
  devices to split them over; logs a warning listing them (a silent memory blow-up otherwise).
  On a pure data-parallel mesh replication is the intent and nothing is reported."""
  if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
    return []
  big = []
  for path, x, s in _pairs(tree, shardings):
    nbytes = int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
    if nbytes >= min_bytes and s.is_fully_replicated:
      big.append(f"{path} {tuple(np.shape(x))} ({nbytes / 2**20:.1f} MiB)")
  if big:
    log.warning("sharding: %d large array(s) are fully replicated on mesh %s (no rule or no "
                "divisible dim): %s", len(big), dict(mesh.shape), "; ".join(big))
  return big


# ------------------------------------------------------------------------------------ batches


def batch_spec(shape: Sequence[int], mesh: Mesh, rules=RULES, name: str = "batch") -> P:
  """Leading dim on the rule for `batch` (default data x fsdp), the rest replicated."""
  if not len(shape):
    return P()
  return logical_to_spec((BATCH,) + (None,) * (len(shape) - 1), shape, mesh, rules, name)


def batch_shardings(batch, mesh: Mesh, rules=RULES, global_shapes: bool = True):
  """NamedShardings for a batch pytree (arrays with a leading example dim).

  The shapes are global unless `global_shapes=False`, in which case the leading dims are
  per-process and multiplied by jax.process_count() (except for arrays that already are global
  jax.Arrays).
  """
  k = 1 if global_shapes else jax.process_count()

  def one(path, x):
    shape, name = np.shape(x), "batch" + jax.tree_util.keystr(path)
    if shape and not (isinstance(x, jax.Array) and not x.is_fully_addressable):  # per-process
      shape = (shape[0] * k,) + tuple(shape[1:])
    return NamedSharding(mesh, batch_spec(shape, mesh, rules, name))

  return jax.tree_util.tree_map_with_path(one, batch)


def _process_rows(sharding, global_shape):
  """The sorted distinct [lo, hi) row ranges of dim 0 that this process's devices hold."""
  rows = set()
  for idx in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
    s = idx[0] if idx else slice(None)
    lo, hi, _ = s.indices(global_shape[0])
    rows.add((lo, hi))
  return sorted(rows)


def shard_batch(local_batch, mesh: Mesh, rules=RULES, shardings=None):
  """Global jax.Arrays from this process's slice of the batch (its rows of the global batch).

  One process: the batch is the global batch. Several processes: process p holds rows
  [p * b, (p + 1) * b) of the global batch (caopd_jax.data.BatchIterator's layout); when the
  mesh gives each process exactly those rows the arrays are assembled with
  jax.make_array_from_process_local_data, otherwise (e.g. a batch replicated across hosts,
  or a leading dim that does not divide the batch axes) the per-process slices are first
  all-gathered on the host.
  """
  if shardings is None:
    shardings = batch_shardings(local_batch, mesh, rules, global_shapes=False)
  n, p = jax.process_count(), jax.process_index()

  def one(x, s):
    if isinstance(x, jax.Array) and (x.sharding == s or not x.is_fully_addressable):
      return x if x.sharding == s else jax.device_put(x, s)  # already a global array
    x = np.asarray(x)
    if n == 1:
      return jax.device_put(x, s)
    if not x.shape:
      return jax.make_array_from_process_local_data(s, x, x.shape)
    global_shape = (x.shape[0] * n,) + x.shape[1:]
    b = x.shape[0]
    if _process_rows(s, global_shape) == [(p * b, (p + 1) * b)]:
      return jax.make_array_from_process_local_data(s, x, global_shape)
    _log_once(("allgather", s, global_shape),
              "shard_batch: the mesh does not give process %d rows [%d, %d) of the batch; "
              "all-gathering the per-process slices on the host.", p, p * b, (p + 1) * b)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.make_array_from_process_local_data(s, full, global_shape)

  return jax.tree.map(one, local_batch, shardings)


# --------------------------------------------------------------------------- state placement


def place(tree, shardings):
  """Puts a host-identical pytree (e.g. a freshly built TrainState) on its shardings.

  Every process must hold the same values (same seed / same checkpoint); on several processes
  each one supplies the shards of its own devices.
  """
  flat_sh = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  sh_tree = jax.tree.unflatten(jax.tree.structure(tree), _expand(tree, flat_sh))

  def one(x, s):
    if isinstance(x, jax.Array) and x.sharding == s:
      return x  # already where it belongs (e.g. a state born sharded)
    if s.is_fully_addressable or isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, s)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

  return jax.tree.map(one, tree, sh_tree)


def _expand(tree, flat_sh):
  """Per-array shardings (one per leaf of `tree`) from per-node ones (Variables as nodes)."""
  nodes = jax.tree.leaves(tree, is_leaf=_is_variable)
  if len(nodes) != len(flat_sh):
    raise ValueError(f"{len(nodes)} arrays but {len(flat_sh)} shardings.")
  out = []
  for node, s in zip(nodes, flat_sh):
    out.extend([s] * len(jax.tree.leaves(node)))
  return out


def leaf_shardings(tree, shardings):
  """`shardings` (a prefix, Variables as nodes) broadcast to one sharding per leaf of `tree`,
  with the structure of `tree` (as needed by e.g. checkpoint restore targets)."""
  flat_sh = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  return jax.tree.unflatten(jax.tree.structure(tree), _expand(tree, flat_sh))


# ------------------------------------------------------------------------------------- jits


def jit_train_step(step_fn, mesh: Mesh, state_sharding, batch_sharding, donate: bool = True):
  """`step_fn(state, batch) -> (state, metrics)` jitted with declared in/out shardings; the
  state buffers are donated (updated in place); metrics come back replicated."""
  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


@functools.lru_cache(maxsize=32)
def _sampler(graphdef, cfg, mesh, param_treedef, param_sh, batch_sh):
  params_sharding = jax.tree.unflatten(param_treedef, param_sh)

  def run(params, prompt, prompt_valid, key):
    from caopd_jax import sampling  # pylint: disable=g-import-not-at-top
    return sampling.sample(graphdef, params, prompt, prompt_valid, key, cfg)

  return jax.jit(run, in_shardings=(params_sharding, batch_sh, batch_sh, replicated(mesh)),
                 out_shardings=batch_sh)


def shard_sample(graphdef, params, prompt, prompt_valid, key, cfg, mesh: Mesh, rules=RULES,
                 params_sharding=None):
  """`caopd_jax.sampling.sample` on `mesh`: params on their rule shardings, the prompts split
  over the batch axes, the key replicated; the outputs come back split over the batch axes.
  `prompt`/`prompt_valid` are this process's rows (the global batch on one process).
  Tokens are identical to the unsharded sampler for the same key (the threefry RNG is
  partitionable, so random bits do not depend on the sharding)."""
  if params_sharding is None:
    params_sharding = tree_shardings(params, mesh, rules)
  b = np.shape(prompt)[0] * jax.process_count()
  batch_sh = NamedSharding(mesh, batch_spec((b,), mesh, rules, "sampler batch"))
  treedef = jax.tree.structure(params_sharding, is_leaf=lambda s: isinstance(s, NamedSharding))
  flat = tuple(jax.tree.leaves(params_sharding, is_leaf=lambda s: isinstance(s, NamedSharding)))
  fn = _sampler(graphdef, cfg, mesh, treedef, flat, batch_sh)
  prompt, prompt_valid = shard_batch((prompt, prompt_valid), mesh, rules,
                                     shardings=(batch_sh, batch_sh))
  if not _is_placed(params, params_sharding):
    params = place(params, params_sharding)
  with jax.set_mesh(mesh):  # resolves `constrain` inside the sampler
    return fn(params, prompt, prompt_valid, key)


def _is_placed(tree, shardings) -> bool:
  for _, x, s in _pairs(tree, shardings):
    if not isinstance(x, jax.Array) or x.sharding != s:
      return False
  return True


def shardings_summary(tree, shardings) -> str:
  """One line per array: path, shape, spec (for the run log)."""
  return "\n".join(f"  {p:60s} {str(s):18s} {spec}" for p, s, spec in describe(tree, shardings))


__all__ = ["MESH_AXES", "RULES", "make_mesh", "mesh_shape", "logical_to_spec", "tree_shardings",
           "state_shardings", "batch_spec", "batch_shardings", "shard_batch", "place",
           "leaf_shardings", "jit_train_step", "shard_sample", "check_replicated", "describe",
           "replicated", "shardings_summary"]
