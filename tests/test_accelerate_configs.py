"""examples/accelerate/*.yaml are configs accelerate reads: every key known to it, the FSDP2 one a plugin it
builds (saving full state dicts, so save_model writes a plain checkpoint), the ZeRO-3 one gathering 16-bit weights
at save. Whether they *run* is checked on GPUs by tests/gpu/test_sharded_engines.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_reads_every_key_of_the_example_configs(path, tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    raw = yaml.safe_load(path.read_text())
    config = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys raise
    assert config.distributed_type.value == raw["distributed_type"]
    options = {a for action in launch_command_parser()._actions for a in action.option_strings}
    nested = {**(raw.get("fsdp_config") or {}), **(raw.get("deepspeed_config") or {})}
    unknown = [key for key in nested if f"--{key}" not in options]
    assert not unknown, f"{path.name}: accelerate launch has no option for {unknown}"


def test_fsdp_example_is_fsdp2_saving_full_state_dicts():
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = yaml.safe_load((CONFIGS[0].parent / "fsdp.yaml").read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"],
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        cpu_offload=fsdp["fsdp_offload_params"],
        cpu_ram_efficient_loading=fsdp["fsdp_cpu_ram_efficient_loading"],
        state_dict_type=fsdp["fsdp_state_dict_type"],
    )
    assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_zero3_example_partitions_parameters_and_gathers_them_at_save():
    ds = yaml.safe_load((CONFIGS[0].parent / "deepspeed_zero3.yaml").read_text())["deepspeed_config"]
    assert ds["zero_stage"] == 3 and ds["zero3_save_16bit_model"] is True
