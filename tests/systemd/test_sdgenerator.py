"""lacme.systemd.generator on the host: which directories the drop-in opens, its
syntax, and that a broken configuration opens nothing.  Its run at boot is
tested in the box (test_systemd_units.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lacme.systemd import generator
from tests.lacmeenv import write_key


def write_config(tmp_path: Path, certs: str) -> Path:
    conf = tmp_path / "lacme.conf"
    conf.write_text("[client]\nconnect = /run/lacme/client.socket\n"
                    "socket = /run/lacme/accountd.socket\n"
                    "[webserver]\nlisten =\nchallenge-directory = /run/lacme/challenges\n")
    (tmp_path / "lacme-certs.conf").write_text(certs)
    return conf


def section(tmp_path: Path, name: str, **paths: str) -> str:
    key = write_key(tmp_path / f"{name}.key", "p256")
    lines = [f"[{name}]", f"certificate-key = {key}", f"subject = /CN={name}.example.com"]
    lines += [f"{k} = {v}" for k, v in paths.items()]
    return "\n".join(lines) + "\n"


def dropin(tmp_path: Path) -> Path:
    return tmp_path / "out" / "lacme-renew.service.d" / "50-certificate-paths.conf"


def test_generate_opens_certificate_dirs_and_challenge_dir(tmp_path: Path) -> None:
    certs = (section(tmp_path, "www", certificate="/srv/certs/www/cert.pem",
                     **{"certificate-chain": "/etc/ssl/www/chain.pem"})
             + section(tmp_path, "mail", **{"certificate-chain": "/srv/certs/mail/chain.pem"}))
    assert generator.generate(str(write_config(tmp_path, certs)), str(tmp_path / "out"))
    lines = dropin(tmp_path).read_text().splitlines()
    assert "[Service]" in lines
    assert [l for l in lines if l.startswith("ReadWritePaths=")] == [
        "ReadWritePaths=-/etc/ssl/www", "ReadWritePaths=-/run/lacme/challenges",
        "ReadWritePaths=-/srv/certs/mail", "ReadWritePaths=-/srv/certs/www"]
    # lacme-placeholder.service writes the same certificate files
    placeholder = tmp_path / "out" / "lacme-placeholder.service.d" / "50-certificate-paths.conf"
    assert placeholder.read_text() == dropin(tmp_path).read_text()


def test_generate_writes_nothing_on_config_error(tmp_path: Path) -> None:
    conf = write_config(tmp_path, "[www]\ncertificate = /srv/x.pem\nbogus = 1\n")
    logged: list[str] = []
    assert generator.generate(str(conf), str(tmp_path / "out"), logged.append) is False
    assert not (tmp_path / "out").exists()
    assert len(logged) == 1 and "lacme-certs.conf" in logged[0] and "\n" not in logged[0]


def test_generate_writes_nothing_without_config(tmp_path: Path) -> None:
    logged: list[str] = []
    assert generator.generate(str(tmp_path / "missing.conf"), str(tmp_path / "out"),
                                logged.append) is False
    assert logged == []
    assert not (tmp_path / "out").exists()


def test_main_usage_error_without_directories() -> None:
    assert generator.main([]) == 2


@pytest.mark.parametrize("path,word", [
    ("/srv/a", "/srv/a"), ("/srv/100%", "/srv/100%%"), ("/srv/a b", '"/srv/a b"'),
    ('/srv/q"x', '"/srv/q\\"x"'), ("/srv/back\\slash", '"/srv/back\\\\slash"'),
])
def test_quote_path_escapes_specifiers_and_spaces(path: str, word: str) -> None:
    assert generator.quote_path(path) == word


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1))
def test_quote_path_is_one_word(path: str) -> None:
    word = generator.quote_path("/" + path)
    unquoted = word[1:-1] if word.startswith('"') else word
    assert "%" not in unquoted.replace("%%", "")
    assert not any(c.isspace() for c in word) or (word[0] == word[-1] == '"')
