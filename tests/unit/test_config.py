"""pierd's settings as a user writes them: what a config file may say, and what it is told when it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from pier.config import load_settings


def test_stomp_role_is_refused_saying_what_replaced_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pierd.toml"
    config.write_text('stomp_broker = "127.0.0.1:61613"\nstomp_role = "admin"\n')
    with pytest.raises(SystemExit) as exited:
        load_settings(["--config", str(config), "--state-dir", str(tmp_path)])
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert "stomp_role" in message and "authorization: Bearer" in message and "pier token create" in message
