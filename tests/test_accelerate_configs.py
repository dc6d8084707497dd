"""configs/accelerate/*.yaml as `accelerate launch --config_file` reads them (accelerate's own classes; no GPU)."""

from __future__ import annotations

from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.constants import FSDP_AUTO_WRAP_POLICY, FSDP_BACKWARD_PREFETCH, FSDP_STATE_DICT_TYPE

from tests.conftest import CONFIG_DIR


def load(name: str) -> ClusterConfig:
    config = load_config_from_file(str(CONFIG_DIR / "accelerate" / name))
    assert isinstance(config, ClusterConfig)
    assert config.mixed_precision == "bf16" and not config.use_cpu and config.num_processes > 1
    # `accelerate launch` copies every key of these sections onto its own command-line arguments: no unknown ones
    arguments = {action.dest for action in launch_command_parser()._actions}
    sections = {**config.deepspeed_config, **config.fsdp_config}
    assert not {key for key in sections if key not in arguments}
    return config


def test_deepspeed_zero3():
    config = load("deepspeed_zero3.yaml")
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_init_flag"] is True
    assert config.fsdp_config == {}


def test_fsdp_full_shard():
    config = load("fsdp.yaml")
    fsdp = config.fsdp_config
    assert config.distributed_type == DistributedType.FSDP
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_use_orig_params"] is True
    assert fsdp["fsdp_auto_wrap_policy"] in FSDP_AUTO_WRAP_POLICY
    assert fsdp["fsdp_backward_prefetch"] in FSDP_BACKWARD_PREFETCH
    assert fsdp["fsdp_state_dict_type"] in FSDP_STATE_DICT_TYPE
    assert config.deepspeed_config == {}
