"""Downloads that cannot happen (no network, a host that cannot be resolved, ``HF_HUB_OFFLINE=1``) end
at once in one line naming the model, the URL or Hub id, the local file it would be read from, and
``HF_HUB_OFFLINE=1``. Nothing here reaches the network: name resolution and the download functions
are replaced where a real call would wait."""
import socket
import time
import urllib.error

import huggingface_hub
import pytest
import timm
import torch

from visattn import create_model
from visattn.cli import main
from visattn.models import registry
from visattn.weights import DownloadError, WeightsError, save_state_dict

pytestmark = pytest.mark.usefixtures("no_download")


@pytest.fixture
def unresolvable(monkeypatch):
    """No host name resolves, as on a machine without network; the names asked are recorded."""
    asked = []

    def refuse(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return asked


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_encoder_weights_from_an_unresolvable_host_fail_at_once_naming_everything(unresolvable, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        create_model("danet_r101_d8", encoder_weights="imagenet")
    assert time.perf_counter() - start < 5  # no retries
    repo = timm.models.get_pretrained_cfg("resnet101").hf_hub_id
    cache = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>" / "model.safetensors"
    assert _one_line(err) == (
        f"danet_r101_d8: encoder resnet101 (ImageNet weights): cannot fetch hf-hub:{repo}: cannot resolve the host "
        f"huggingface.co. Offline, place the file at {cache} and set HF_HUB_OFFLINE=1 (local files only, no retries)")
    assert unresolvable == ["huggingface.co"]
    assert isinstance(err.value, WeightsError) and isinstance(err.value, ValueError)


def test_cached_encoder_weights_load_without_the_unresolvable_host(unresolvable, tmp_path, monkeypatch):
    torch.manual_seed(0)
    weights = timm.create_model("resnet18").state_dict()
    cache = tmp_path / "cached.safetensors"
    save_state_dict(weights, cache)
    monkeypatch.setattr("visattn.models.segmentation.encoders.hub_cache_file", lambda *args: cache)
    model = create_model("danet", encoder="resnet18", encoder_weights="imagenet")  # timm's download refuses
    torch.testing.assert_close(model.encoder.state_dict()["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"],
                               rtol=0, atol=0)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_cached_encoder_weights_are_adapted_to_in_chans_as_timm_adapts_them(unresolvable, tmp_path, monkeypatch,
                                                                            in_chans):
    torch.manual_seed(0)
    weights = timm.create_model("resnet18").state_dict()
    cache = tmp_path / "cached.safetensors"
    save_state_dict(weights, cache)
    monkeypatch.setattr("visattn.models.segmentation.encoders.hub_cache_file", lambda *args: cache)
    model = create_model("danet", encoder="resnet18", encoder_weights="imagenet", in_chans=in_chans)
    rgb = weights["conv1.weight"]  # timm's rule: one channel sums R, G and B; more repeat them, scaled by 3 / in_chans
    expected = rgb.sum(1, keepdim=True) if in_chans == 1 else rgb[:, [0, 1, 2, 0]] * 3 / 4
    torch.testing.assert_close(model.encoder.state_dict()["conv1.weight"], expected)
    torch.testing.assert_close(model.encoder.state_dict()["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"],
                               rtol=0, atol=0)


def test_encoder_weights_offline_name_the_hub_file(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(DownloadError, match=r"^danet: encoder resnet18 \(ImageNet weights\): cannot fetch "
                                            r"hf-hub:timm/resnet18\.\w+: Cannot find the requested files in the "
                                            r"disk cache\. Offline, place the file at .*models--timm--resnet18\..*"
                                            r"HF_HUB_OFFLINE=1"):
        create_model("danet", encoder="resnet18", encoder_weights="imagenet")


def test_released_weights_offline_name_the_model_url_and_torch_hub_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))

    def offline(url, **kwargs):
        raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = registry.released_weights("cbam_resnet50").url
    with pytest.raises(DownloadError) as err:
        create_model("cbam_resnet50", pretrained=True)
    cache = tmp_path / "torch-hub" / "checkpoints" / "RESNET50_CBAM_new_name_wrap.pth"
    assert _one_line(err) == (
        f"cbam_resnet50: cannot fetch {url}: <urlopen error [Errno -2] Name or service not known>. Offline, place the "
        f"file at {cache} and set HF_HUB_OFFLINE=1 (local files only, no retries)")


def test_a_failed_download_is_one_line_from_the_cli(unresolvable, tmp_path, capsys):
    code = main(["train", "--set", "model.name=danet_r101_d8", "--set", "model.kwargs.encoder_weights=imagenet",
                 "--set", "train.iters=1", "--set", f"run.dir={tmp_path / 'run'}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "danet_r101_d8" in err and "hf-hub:timm/resnet101" in err and "HF_HUB_OFFLINE=1" in err
