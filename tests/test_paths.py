"""The cache root is one setting: PARAKNOW_CACHE, else cache/ in a checkout, else the user cache folder."""
from paraknow.core import paths


def test_cache_root_setting_checkout_and_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAKNOW_CACHE", str(tmp_path / "chosen"))
    assert paths.cache_root() == tmp_path / "chosen" and (tmp_path / "chosen").is_dir()
    monkeypatch.delenv("PARAKNOW_CACHE")
    assert paths.default_cache_root() == paths.PACKAGE_DIR.parent / "cache"  # this checkout
    installed = tmp_path / "site-packages" / "paraknow"  # no pyproject.toml/app.py beside it
    installed.mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE_DIR", installed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.checkout_root() is None
    assert paths.default_cache_root() == tmp_path / "xdg" / "paraknow"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.default_cache_root() == tmp_path / "home" / ".cache" / "paraknow"


def test_an_export_zip_never_follows_or_packs_a_symlink(tmp_path):
    import io
    import zipfile

    from paraknow.core.fsio import zip_folder

    secret = tmp_path / "outside" / "hostname"
    secret.parent.mkdir()
    secret.write_text("the machine's name")
    export = tmp_path / "export"
    (export / "residual").mkdir(parents=True)
    (export / "paraknow.json").write_text("{}")
    (export / "residual" / "adapter_config.json").write_text("{}")
    (export / "hostname").symlink_to(secret)
    (export / "linked_dir").symlink_to(secret.parent, target_is_directory=True)
    names = zipfile.ZipFile(io.BytesIO(zip_folder(export))).namelist()
    assert names == ["export/paraknow.json", "export/residual/adapter_config.json"]
