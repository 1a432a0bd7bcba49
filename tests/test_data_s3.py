"""The data API on an S3-compatible store (moto's server speaks S3): uploads, listings, signed
downloads and deletes reach the bucket through libcloud's S3 driver; the keys are write-only."""
import hashlib
from urllib.parse import urlsplit

import pytest
from libcloud.storage.drivers.s3 import S3StorageDriver
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services.data import set_storage_credentials
from gateway.settings import Settings
from gateway.storage import StorageError
from schema.credentials import CredentialBox
from schema.db import make_engine, upgrade
from tests.conftest import Api
from tests.services import moto_server

BUCKET = "prominence-data"
KEY, SECRET = "AKIDMOTO", "moto-secret-never-shown"


@pytest.fixture(scope="module")
def moto():
    with moto_server() as url:
        yield url


def bucket(moto_url: str):
    parts = urlsplit(moto_url)
    driver = S3StorageDriver(KEY, SECRET, secure=False, host=parts.hostname, port=parts.port, region="us-east-1")
    return driver, driver.get_container(BUCKET)


def settings_for(tmp_path, moto_url: str, database_url: str) -> Settings:
    parts = urlsplit(moto_url)
    return Settings.load(data_dir=str(tmp_path / "data"), database_url=database_url, run_provisioner=False,
                         storage_url=f"s3+http://{parts.hostname}:{parts.port}/{BUCKET}?region=us-east-1")


def test_data_on_s3(tmp_path, moto, database_url, caplog):
    settings = settings_for(tmp_path, moto, database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    set_storage_credentials(engine, CredentialBox.for_data_dir(settings.data_dir), {"key": KEY, "secret": SECRET})
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(client, settings)
        data = b"on s3\n" * 1000
        digest = hashlib.sha256(data).hexdigest()
        made = client.post("/v1/data/upload", json={"filename": "s3.txt", "checksum": digest}, headers=api.headers())
        assert made.status_code == 201
        url = urlsplit(made.json()["url"])
        assert url.path == "/v1/storage/uploads/users/alice/s3.txt"  # through the gateway, checked there
        assert client.put(f"{url.path}?{url.query}", content=b"wrong").status_code == 400
        assert client.put(f"{url.path}?{url.query}", content=data).status_code == 201

        driver, container = bucket(moto)
        [obj] = [o for o in driver.list_container_objects(container) if o.name.startswith("uploads/")]
        assert obj.name == "uploads/users/alice/s3.txt" and obj.size == len(data)
        assert driver.get_object(BUCKET, obj.name).meta_data.get("sha256") == digest  # x-amz-meta-sha256
        assert b"".join(driver.download_object_as_stream(obj)) == data

        [item] = client.get("/v1/data", headers=api.headers()).json()
        assert (item["name"], item["size"], item["sha256"]) == ("s3.txt", len(data), digest)
        signed = urlsplit(client.app.state.store.signed_url("uploads/users/alice/s3.txt"))
        assert client.get(f"{signed.path}?{signed.query}").content == data  # the job artifact's way
        assert client.get("/v1/data", headers=api.headers("bob")).json() == []

        assert client.delete("/v1/data/s3.txt", headers=api.headers()).status_code == 204
        assert [o.name for o in driver.list_container_objects(container) if o.name.startswith("uploads/")] == []
        assert client.get(f"{signed.path}?{signed.query}").status_code == 404
    assert SECRET not in caplog.text


def test_s3_without_credentials_fails_clearly(tmp_path, moto):
    settings = settings_for(tmp_path, moto, f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(StorageError, match="set-credentials"), TestClient(create_app(settings)):
        pass


def test_storage_url_checks(tmp_path):
    from gateway.settings import SettingsError

    for url in ("ftp://x/y", "s3+http://user:pw@host/bucket"):
        with pytest.raises(SettingsError) as error:
            Settings.load(data_dir=str(tmp_path), storage_url=url)
        assert "pw" not in str(error.value)
