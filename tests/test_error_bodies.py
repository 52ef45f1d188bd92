"""What clients read in error bodies names the model, the version and the reason, never a local path or the S3
endpoint (replica/redact.py); the log keeps the whole text."""
from __future__ import annotations

from replica.redact import known_places, public_message
from replica.spec import ModelSource
from tests.helpers import write_api
from tests.replica_proc import free_port, wait_for


def test_known_places_get_their_labels_and_other_paths_and_urls_a_placeholder():
    places = known_places("/srv/state", "/dev/shm/replica-1", (ModelSource("/data/models", None),
                                                               ModelSource("s3://b/m/", "m")))
    text = ("FileNotFoundError: [Errno 2] No such file or directory: '/srv/state/models/m/1/w.bin'; "
            "/data/models is not a directory; listing s3://b/m/ failed: Could not connect to the endpoint URL: "
            "\"http://10.0.0.5:9000/b?list-type=2\" (endpoint https://s3.example:443, credentials: env); "
            "cannot read /etc/x; TypeError: unsupported operand type(s) for /: 'int' and 'str'")
    out = public_message(text, places)
    for secret in ("/srv/state", "/data/models", "10.0.0.5", "s3.example", "/etc/x"):
        assert secret not in out, out
    assert "'<state dir>/models/m/1/w.bin'" in out and "<models.dir> is not a directory" in out
    assert "listing s3://b/m/ failed" in out and "<endpoint>" in out and "cannot read <path>" in out
    assert "for /: 'int'" in out  # a lone slash is no path


LOADS_A_MISSING_FILE = """
import os

class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return open(os.path.join(model_path, "missing.bin")).read()

    def predict(self, payload):
        return self.client.get_model(payload["model"])
"""


def test_a_local_models_404_names_neither_the_state_dir_nor_the_model_folder(tmp_path, replica):
    models = tmp_path / "my-models"
    (models / "m" / "1").mkdir(parents=True)
    (models / "m" / "1" / "weights.json").write_text("{}")
    spec = write_api(tmp_path / "project", LOADS_A_MISSING_FILE, type="python", name="local",
                     models={"dir": str(models)})
    state = tmp_path / "state"
    r = replica(spec, state_dir=state, poll_interval=0.5)
    resp = wait_for(lambda: (x := r.post("/", json={"model": "m"})).status_code == 404 and "missing.bin" in x.text
                    and [x], timeout=30, message="the 404 with the load error")[0]
    bodies = [resp.text, r.get("/v1/models").text, r.post("/", json={"model": "nope"}).text]
    for body in bodies:
        assert str(state) not in body and str(models) not in body and str(tmp_path) not in body, body
    assert "model 'm'" in resp.text and "FileNotFoundError" in resp.text, resp.text
    assert str(state) in r.log()  # the log has the whole text


def test_an_s3_listing_error_names_no_endpoint(tmp_path, replica):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = write_api(tmp_path / "project", LOADS_A_MISSING_FILE, type="python", name="remote",
                     models={"paths": [{"name": "m", "model_path": "s3://some-bucket/m/"}]})
    r = replica(spec, wait=False, poll_interval=0.5,
                env={"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    ready = wait_for(lambda: (x := r.get("/readyz")).status_code == 503 and "s3://some-bucket/m/" in x.text and [x],
                     timeout=60, message="/readyz naming the listing error")[0]
    bodies = [ready.text, r.get("/v1/models").text]
    for body in bodies:
        assert endpoint not in body and "127.0.0.1" not in body and str(tmp_path) not in body, body
    assert endpoint in r.log()
