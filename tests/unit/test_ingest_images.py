"""Image validation and the per-host rate limiter (no network)."""

import io
import os
import time

import pytest
from PIL import Image

from g2i_core.images import FetchConfig, FetchError, HostRateLimiter, share_of, validate_image
from g2i_core.sample.styles import decompression_bomb_png


def _png(w=8, h=6, noise=False):
    buf = io.BytesIO()
    im = Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)) if noise else Image.new("RGB", (w, h), (10, 200, 30))
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_valid_png_reports_extension_and_size():
    assert validate_image(_png(), max_pixels=100) == ("png", 8, 6)


def test_decompression_bomb_is_refused_from_the_header():
    bomb = decompression_bomb_png()
    started = time.monotonic()
    with pytest.raises(FetchError) as err:
        validate_image(bomb, max_pixels=40_000_000)
    assert err.value.status == "too_many_pixels" and "exceeds" in str(err.value)
    assert time.monotonic() - started < 1.0  # nothing was decoded


def test_pixel_limit_applies_to_ordinary_images_too():
    with pytest.raises(FetchError, match="exceeds max_pixels") as err:
        validate_image(_png(20, 20), max_pixels=399)
    assert err.value.status == "too_many_pixels"


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0JFIF-not-really" + bytes(200), b"",
                                  _png(64, 64, noise=True)[:6000]])
def test_corrupt_or_truncated_bytes_are_corrupt(data):
    with pytest.raises(FetchError) as err:
        validate_image(data, max_pixels=10**6)
    assert err.value.status == "corrupt"


def test_rate_limiter_spaces_requests_per_host_only():
    limiter = HostRateLimiter(per_second=20)
    started = time.monotonic()
    for _ in range(5):
        limiter.wait("a.example")
    assert time.monotonic() - started >= 4 / 20 * 0.9
    other = time.monotonic()
    limiter.wait("b.example")
    assert time.monotonic() - other < 0.02


def test_fetch_config_errors_name_the_field():
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        FetchConfig(concurrency=0).check()
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        FetchConfig(timeout_s=0).check()
    with pytest.raises(ValueError, match="processes must be >= 0"):
        FetchConfig(processes=-1).check()


def test_process_count_auto_rule(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert FetchConfig().processes_for(1999) == 1  # a small fetch is not worth starting processes
    assert FetchConfig().processes_for(2000) == 4  # one per CPU, at most 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert FetchConfig().processes_for(10**6) == 2
    assert FetchConfig(processes=3).processes_for(10) == 3
    assert FetchConfig(processes=3).processes_for(2) == 2  # never more processes than URLs


def test_shares_are_stable_and_spread():
    ids = [f"goodreads:{i}" for i in range(10_000)]
    shares = [share_of(n, 4) for n in ids]
    assert shares == [share_of(n, 4) for n in ids]  # the same node always goes to the same process
    counts = [shares.count(k) for k in range(4)]
    assert min(counts) > 2300, counts  # about a quarter each
