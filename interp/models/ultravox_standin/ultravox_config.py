"""TEST STAND-IN for Ultravox's `ultravox_config.py` (see this package's __init__ docstring).

Same class name, `model_type` and fields as the real `UltravoxConfig`; adds
`standin_api`, which selects the generation of the real code being imitated.
"""

from typing import Any, Dict, Optional

import transformers


class UltravoxConfig(transformers.PretrainedConfig):
    model_type = "ultravox"
    is_composition = False

    def __init__(
        self,
        audio_config: Optional[Dict[str, Any]] = None,
        text_config: Optional[Dict[str, Any]] = None,
        audio_model_id: Optional[str] = None,
        text_model_id: Optional[str] = None,
        ignore_index: int = -100,
        hidden_size: int = 4096,
        stack_factor: int = 8,
        norm_init: float = 0.4,
        projector_act: str = "swiglu",
        projector_ln_mid: bool = False,
        audio_latency_block_size: Optional[int] = None,
        standin_api: str = "v0.5",
        **kwargs,
    ):
        self.ignore_index = ignore_index
        self.audio_model_id = audio_model_id
        self.text_model_id = text_model_id
        self.hidden_size = hidden_size
        self.stack_factor = stack_factor
        self.norm_init = norm_init
        self.projector_act = projector_act
        self.projector_ln_mid = projector_ln_mid
        self.audio_latency_block_size = audio_latency_block_size
        if standin_api not in ("v0.5", "v0.4", "insert"):
            raise ValueError(f"standin_api must be 'v0.5', 'v0.4' or 'insert', not {standin_api!r}")
        self.standin_api = standin_api

        if isinstance(text_config, transformers.PretrainedConfig):
            self.text_config = text_config
        else:
            text_config = dict(text_config or {})
            self.text_config = transformers.CONFIG_MAPPING[text_config.pop("model_type", "llama")](**text_config)
        if isinstance(audio_config, transformers.PretrainedConfig):
            self.audio_config = audio_config
        else:
            audio_config = dict(audio_config or {})
            self.audio_config = transformers.CONFIG_MAPPING[audio_config.pop("model_type", "whisper")](**audio_config)

        self.vocab_size = self.text_config.vocab_size
        self.initializer_range = self.text_config.initializer_range
        super().__init__(**kwargs)


UltravoxConfig.register_for_auto_class()
