"""Shared test support: a loopback Hugging Face Hub, generated weights, real caches.

- ``tests.support.hubserver``: :class:`HubServer`, a Hub look-alike on 127.0.0.1 that
  the real huggingface_hub client and timm download from.
- ``tests.support.weights``: random weights of real architectures (hrnet_w18,
  densenet121, ...), generated once per session, plus tiny torch-free safetensors.
- ``tests.support.caches``: populate HF / torch hub caches with the real clients in
  subprocesses, load models offline, and produce every broken cache state for real.

All modules import only the standard library; torch, timm, torchvision and
huggingface_hub run in subprocesses.
"""

#: The Hub repo timm resolves ``hrnet_w18`` to (``get_pretrained_cfg('hrnet_w18').hf_hub_id``).
HRNET_REPO = "timm/hrnet_w18.ms_aug_in1k"
#: A small repo served by the session ``hub_server`` fixture.
TINY_REPO = "org/tiny"
#: Content of ``config.json`` in :data:`TINY_REPO` (a regular, non-LFS file).
TINY_CONFIG = b'{"architectures": ["Tiny"], "hidden_size": 4}\n'
