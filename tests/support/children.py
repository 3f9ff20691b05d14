"""Small Python programs that tests run as real failing (or succeeding) training processes."""

# A Hub download as timm does it for hrnet18, with huggingface_hub's retry waits shortened so a test
# sees the real failure (refused, black hole, TLS, proxy, 404, cache miss) in seconds, not minutes.
HUB_CHILD = r'''
import sys, time
import huggingface_hub.utils._http as _http
import huggingface_hub.file_download as fd
_http.time.sleep = lambda s: None          # test timing only: no backoff sleeps
fd._ETAG_RETRY_TIMEOUT = 1                  # ... a 1 s retry timeout instead of 60 s
for fn in (_http._http_backoff_base, _http.http_backoff, _http.http_stream_backoff):
    if fn.__kwdefaults__:
        fn.__kwdefaults__["max_retries"] = 1
from huggingface_hub import hf_hub_download
print("Loading pretrained weights for hrnet_w18", flush=True)
hf_hub_download("timm/hrnet_w18.ms_aug_in1k", "model.safetensors")
'''
