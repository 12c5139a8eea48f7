"""Bearer tokens: what http.token may be, http.token_file, and the header check (device/auth.py)."""
from __future__ import annotations

import pytest

from device.__main__ import main as cli
from device.auth import GuessLimiter, bearer_matches, load_token
from device.config import ConfigError, HttpConfig, config_from_dict

# Each of these passed check-config before and could never match a request (or turned auth off).
BAD_TOKENS = {
    "empty": ("", "is empty"),
    "only-spaces": ("   ", "whitespace at position 1"),
    "leading-space": (" s3cret-token", "whitespace at position 1"),
    "trailing-space": ("s3cret-token ", "whitespace at position 13"),
    "inner-space": ("s3cret token", "whitespace at position 7"),
    "tab": ("s3cret\ttoken", "whitespace at position 7"),
    "newline": ("s3cret-token\n", "whitespace at position 13"),
    "non-ascii": ("s3crét-token", "non-printable or non-ASCII character at position 5"),
    "emoji": ("token-🔑", "non-printable or non-ASCII character at position 7"),
    "control-char": ("s3cret\x07token", "non-printable or non-ASCII character at position 7"),
    "nul": ("s3cret\x00", "non-printable or non-ASCII character at position 7"),
    "del": ("s3cret\x7f", "non-printable or non-ASCII character at position 7"),
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
def test_unusable_tokens_are_config_errors_naming_http_token(name):
    token, reason = BAD_TOKENS[name]
    with pytest.raises(ConfigError) as err:
        config_from_dict({"http": {"token": token}})
    message = str(err.value)
    assert message.startswith("http.token: ") and reason in message
    if token.strip():
        assert token.strip() not in message  # the secret is never echoed into logs


def test_printable_ascii_tokens_and_no_token_are_fine():
    assert config_from_dict({"http": {"token": "A-z0_9~!#$%&'()*+,./:;<=>?@[]^`{|}"}}).http.token
    assert config_from_dict({"http": {"token": None}}).http.token is None


def test_check_config_rejects_an_empty_token(tmp_path, capsys):
    config = tmp_path / "device.yaml"
    config.write_text('http:\n  token: ""\n')
    assert cli(["check-config", str(config)]) == 2
    assert "http.token: is empty" in capsys.readouterr().err


def token_file(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_token_file_is_read_with_its_trailing_newline_dropped(tmp_path, mode):
    path = token_file(tmp_path, "s3cret-from-file\n", mode)
    assert load_token(HttpConfig(token_file=str(path))) == b"s3cret-from-file"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o666, 0o602])
def test_token_file_others_could_read_or_change_is_refused(tmp_path, mode):
    path = token_file(tmp_path, "s3cret-from-file\n", mode)
    with pytest.raises(ConfigError, match=rf"^http.token_file: {path} has mode {mode:04o}.*chmod 600"):
        load_token(HttpConfig(token_file=str(path)))


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "is empty"), ("\n", "is empty"), ("two words\n", "whitespace"), ("tök\n", "non-ASCII"),
     ("s3cret\n\n", "whitespace")],
)
def test_token_file_content_follows_the_token_rules(tmp_path, text, reason):
    path = token_file(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^http.token_file: .*{reason}"):
        load_token(HttpConfig(token_file=str(path)))


def test_missing_token_file_and_token_plus_file_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="^http.token_file: not found"):
        load_token(HttpConfig(token_file=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="^http.token_file: set together with http.token"):
        config_from_dict({"http": {"token": "abc", "token_file": str(tmp_path / "t")}})


def test_check_config_reads_the_token_file(tmp_path, capsys):
    path = token_file(tmp_path, "s3cret\n", 0o644)
    config = tmp_path / "device.yaml"
    config.write_text(f"http:\n  token_file: {path}\n")
    assert cli(["check-config", str(config)]) == 2
    assert "http.token_file:" in capsys.readouterr().err
    path.chmod(0o600)
    assert cli(["check-config", str(config)]) == 0


@pytest.mark.parametrize(
    ("header", "ok"),
    [("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer  s3cret ", True), ("Bearer s3cre", False),
     ("Bearer s3crett", False), ("Basic s3cret", False), ("s3cret", False), ("", False),
     ("Bearer s3cr\xe9t", False)],
)
def test_bearer_header_check(header, ok):
    assert bearer_matches(header, b"s3cret") is ok


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_guess_limiter_counts_failures_per_client_within_the_window():
    clock = FakeClock()
    limiter = GuessLimiter(limit=3, window_s=60.0, clock=clock)
    for _ in range(3):
        assert limiter.wait_s("a") == 0
        limiter.failed("a")
        clock.now += 10
    assert limiter.wait_s("a") == pytest.approx(30.0)  # the first failure (t=1000) leaves at t=1060
    assert limiter.wait_s("b") == 0  # others are not affected
    clock.now += 30
    assert limiter.wait_s("a") == 0  # one failure aged out: one more try


def test_guess_limiter_forgets_the_least_recent_client_beyond_its_size():
    limiter = GuessLimiter(limit=1, window_s=60.0, max_clients=2, clock=FakeClock())
    for client in ("a", "b", "c"):
        limiter.failed(client)
    assert limiter.wait_s("a") == 0 and limiter.wait_s("b") > 0 and limiter.wait_s("c") > 0
