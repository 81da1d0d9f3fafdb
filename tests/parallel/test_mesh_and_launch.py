"""Mesh and multi-process configuration: parsing, validation and error messages (no extra devices)."""

from __future__ import annotations

import argparse

import jax
import pytest
from jax.sharding import PartitionSpec

from bitnet_jax import ConfigError, MeshConfig, make_mesh
from bitnet_jax.parallel.distributed import DistributedConfig, DistributedError, add_arguments, config_from_args, wait_for_port
from bitnet_jax.parallel.launch import LaunchResult, free_port, launch
from bitnet_jax.parallel.rules import param_specs, spec_for


def test_mesh_config_shapes():
    assert MeshConfig().shape(8) == (1, 1, 8)
    assert MeshConfig(data=2, tensor=-1).shape(8) == (2, 1, 4)
    assert MeshConfig(data=-1, fsdp=2, tensor=2).shape(16) == (4, 2, 2)
    with pytest.raises(ConfigError, match="multiply to 4"):
        MeshConfig(data=2, tensor=2).shape(8)
    with pytest.raises(ConfigError, match="not divisible"):
        MeshConfig(data=3, tensor=-1).shape(8)


def test_mesh_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^mesh.model: unknown key; known keys: \['data', 'fsdp', 'tensor'\]"):
        MeshConfig.from_dict({"model": 2})
    with pytest.raises(ConfigError, match=r"^mesh.tensor: must be a positive integer or -1, got 0"):
        MeshConfig.from_dict({"tensor": 0})
    with pytest.raises(ConfigError, match=r"^MeshConfig.data: expected int, got True"):
        MeshConfig(data=True)
    with pytest.raises(ConfigError, match="at most one axis"):
        MeshConfig(data=-1, tensor=-1)
    path = tmp_path / "mesh.yaml"
    path.write_text("mesh:\n  data: 2\n  tensr: 4\n")
    with pytest.raises(ConfigError, match=rf"{path}: mesh.tensr: unknown key"):
        MeshConfig.from_yaml(path)
    path.write_text("mesh:\n  data: 1\n  tensor: -1\n")
    assert MeshConfig.from_yaml(path) == MeshConfig(data=1, fsdp=1, tensor=-1)


def test_make_mesh_on_available_devices():
    mesh = make_mesh({"tensor": -1})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.shape["tensor"] == jax.device_count()


def test_rules_map_roles_to_axes():
    import jax.numpy as jnp

    from conftest import packed_form

    from bitnet_jax import ModelConfig
    from bitnet_jax.model import Transformer

    module = Transformer(ModelConfig.preset("tiny"), packed_form("xla"))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    mesh = make_mesh()
    specs = param_specs(shapes, mesh)
    layer = specs["layers_0"]
    assert layer["self_attn"]["q_proj"]["weight_packed"].codes == PartitionSpec("fsdp", "tensor")
    assert layer["mlp"]["down_proj"]["weight_packed"].codes == PartitionSpec("fsdp", "tensor")
    assert layer["self_attn"]["q_proj"]["weight_scale"] == PartitionSpec()
    assert layer["input_layernorm"]["weight"] == PartitionSpec(None)
    assert specs["embed_tokens"] == PartitionSpec("tensor", "fsdp")
    assert spec_for("layers_0/mlp/up_proj/weight", (128, 64), mesh) == PartitionSpec("fsdp", "tensor")


def test_rules_reject_indivisible_and_unknown_parameters():
    class FakeMesh:
        shape = {"data": 1, "fsdp": 1, "tensor": 3}

    with pytest.raises(ConfigError, match=r"'layers_0/self_attn/k_proj/weight_packed/codes' dimension 64 .* 'tensor' of size 3"):
        spec_for("layers_0/self_attn/k_proj/weight_packed/codes", (8, 64), FakeMesh())
    # a scanned model's stacks: the same rule behind the layer axis
    assert spec_for("layers/mlp/up_proj/weight_packed/codes", (4, 8, 63), FakeMesh()) == PartitionSpec(
        None, "fsdp", "tensor")
    with pytest.raises(ConfigError, match="no sharding rule matches parameter 'mystery'"):
        spec_for("mystery", (4,), FakeMesh())


def test_distributed_config_from_env_and_flags():
    env = {"BITNET_JAX_COORDINATOR": "10.0.0.1:1234", "BITNET_JAX_NUM_PROCESSES": "4", "BITNET_JAX_PROCESS_ID": "2"}
    cfg = DistributedConfig.from_env(env)
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 2)
    assert cfg.is_multiprocess
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--process-id", "3", "--init-timeout", "7"])
    cfg = config_from_args(args, env)
    assert (cfg.process_id, cfg.initialization_timeout, cfg.num_processes) == (3, 7, 4)
    assert not DistributedConfig.from_env({}).is_multiprocess


def test_distributed_config_errors_name_the_variable():
    with pytest.raises(ConfigError, match=r"\$BITNET_JAX_NUM_PROCESSES must be an integer, got 'two'"):
        DistributedConfig.from_env({"BITNET_JAX_NUM_PROCESSES": "two"})
    with pytest.raises(ConfigError, match=r"BITNET_JAX_PROCESS_ID.*process_id: must be below num_processes \(2\), got 2"):
        DistributedConfig.from_env({"BITNET_JAX_NUM_PROCESSES": "2", "BITNET_JAX_PROCESS_ID": "2"})
    with pytest.raises(ConfigError, match="'host:port'"):
        DistributedConfig(coordinator_address="localhost")
    with pytest.raises(ConfigError, match="initialization_timeout"):
        DistributedConfig(initialization_timeout=0)


def test_wait_for_port_names_the_coordinator():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(DistributedError, match=f"coordinator {address} .* did not open within 0.3 s"):
        wait_for_port(address, 0.3)


def test_launcher_runs_and_reports_failures():
    import sys

    ok = launch([sys.executable, "-c", "import os; assert os.environ['BITNET_JAX_PROCESS_ID'] in '012'"], 3)
    assert isinstance(ok, LaunchResult) and ok.returncodes == (0, 0, 0)
    code = "import os, sys; sys.exit(5 if os.environ['BITNET_JAX_PROCESS_ID'] == '1' else 0)"
    with pytest.raises(DistributedError, match="process 1 of 2 exited with status 5"):
        launch([sys.executable, "-c", code], 2)
    with pytest.raises(DistributedError, match=r"exceeded its 0.5 s timeout; processes \[0\]"):
        launch([sys.executable, "-c", "import time; time.sleep(30)"], 1, timeout=0.5)


def test_one_device_mesh_keeps_the_kernel():
    """On a one-device mesh the mesh-aware wrapper is the kernel itself (nothing to split)."""
    from bitnet_jax.parallel import on_mesh
    from pallas_kernels import get_kernel

    kernel = get_kernel("xla")
    assert on_mesh(kernel, make_mesh()) is kernel


def test_example_mesh_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "mesh").glob("*.yaml"))
    assert files
    for path in files:
        assert isinstance(MeshConfig.from_yaml(path), MeshConfig)


HLO = """
  %all-to-all.53 = (s32[4,1,32]{2,1,0}, s32[4,1,32]{2,1,0}) all-to-all(%a, %b), channel_id=6, metadata={op_name="jit(_forward)/Transformer/layers_0/self_attn/q_proj/concatenate" stack_frame_id=1}
  %all-gather = f32[2,8,128]{1,0,2} all-gather(%m), channel_id=42, dimensions={2}, metadata={op_name="jit(_forward)/Transformer/btd,vd->btv/dot_general" stack_frame_id=264}
  %all-gather.1 = u8[16,64]{1,0} all-gather(%p), channel_id=43, dimensions={0}, metadata={op_name="jit(_forward)/Transformer/layers_0/mlp/up_proj/shard_map" stack_frame_id=2}
  %all-reduce.2 = s32[2,64]{1,0} all-reduce(%q), channel_id=44, to_apply=%add, metadata={op_name="jit(_forward)/Transformer/layers_0/mlp/down_proj/shard_map/psum_invariant"}
  %all-reduce.3 = (f32[2,64]{1,0}, f32[2,32]{1,0}) all-reduce(%r, %s), channel_id=45, metadata={op_name="jit(_forward)/Transformer/layers_0/self_attn/(v_proj/dot_general:k_proj/dot_general)"}
  %add.1 = f32[2]{0} add(%x, %y)
"""


def test_hlo_collectives_and_weight_traffic_classification():
    from bitnet_jax.parallel._hlo import collectives, gathers_packed_weights, moves_weights, summary

    colls = collectives(HLO)
    assert [c.kind for c in colls] == ["all-to-all", "all-gather", "all-gather", "all-reduce", "all-reduce"]
    assert colls[0].nbytes == 2 * 4 * 4 * 32 and colls[0].dtypes == {"s32"}
    assert colls[2].nbytes == 16 * 64 and colls[4].nbytes == 4 * (128 + 64)
    assert [moves_weights(c) for c in colls] == [True, False, False, False, False]
    assert [gathers_packed_weights(c) for c in colls] == [False, False, True, False, False]
    assert summary(colls)["all-reduce"] == {"count": 2, "bytes": 512 + 768}


def test_launch_cli(capsys):
    import sys

    from bitnet_jax.cli import main

    assert main(["launch", "-n", "2", "--", sys.executable, "-c", "pass"]) == 0
    code = "import os, sys; sys.exit(3 if os.environ['BITNET_JAX_PROCESS_ID'] == '0' else 0)"
    assert main(["launch", "-n", "2", "--timeout", "60", "--", sys.executable, "-c", code]) == 2
    assert "process 0 of 2 exited with status 3" in capsys.readouterr().err
