"""Submitting to a Kubeflow Pipelines backend: the backend's version is checked before anything is created, the
arguments are typed by the package's parameters, and the run carries the config's params once.

No KFP backend runs here (it needs Kubernetes, Argo and a database), so the real ``kfp.Client`` talks HTTP to a
small server that answers the four API calls a submission makes as KFP 2.17's API server does (the healthz body
of ``backend/src/apiserver/main.go``, the v2beta1 experiment and run messages)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from image_emotion import cli
from image_emotion.errors import ConfigError
from image_emotion.kubeflow.submit import MIN_KFP_BACKEND, check_backend, package_parameters, parse_arguments

PACKAGE = "pipelines/image_emotion.yaml"
MLFLOW = "http://mlflow.mlflow.svc:5000"


class FakeKfpApi(ThreadingHTTPServer):
    """The KFP API server's healthz, experiment and run endpoints; records every request."""

    def __init__(self, tag_name: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tag_name = tag_name
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, JSON body)
        self.experiments: dict[str, str] = {}  # display name -> id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def created_runs(self) -> list[dict]:
        return [body for method, path, body in self.requests if (method, path) == ("POST", "/apis/v2beta1/runs")]


class _Handler(BaseHTTPRequestHandler):
    server: FakeKfpApi

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.server.requests.append(("GET", url.path, {}))
        if url.path == "/apis/v2beta1/healthz":
            self._answer({"commit_sha": "0" * 40, "tag_name": self.server.tag_name, "multi_user": False})
        elif url.path == "/apis/v2beta1/experiments":
            wanted = json.loads(parse_qs(url.query)["filter"][0])["predicates"][0]["stringValue"]
            found = [{"experiment_id": i, "display_name": n} for n, i in self.server.experiments.items() if n == wanted]
            self._answer({"experiments": found} if found else {})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.server.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            experiment_id = f"exp-{len(self.server.experiments)}"
            self.server.experiments[body["display_name"]] = experiment_id
            self._answer({**body, "experiment_id": experiment_id})
        elif self.path == "/apis/v2beta1/runs":
            self._answer({**body, "run_id": f"run-{len(self.server.created_runs()) - 1}", "state": "PENDING"})
        else:
            self.send_error(404)


@pytest.fixture
def kfp_api(request):
    server = FakeKfpApi(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _submit(kfp_api: FakeKfpApi, *extra: str) -> int:
    return cli.main(
        ["run-pipeline", "--host", kfp_api.url, "--package", PACKAGE, "--mlflow-tracking-uri", MLFLOW, *extra]
    )


@pytest.mark.parametrize("tag", ["2.17.0", "v2.17.3", "2.18.0", "3.0.0"])
def test_a_backend_at_the_minimum_or_later_passes(tag):
    assert check_backend(tag, "h") >= check_backend(MIN_KFP_BACKEND, "h")


@pytest.mark.parametrize(
    "tag, says",
    [
        ("2.16.1", "is 2.16.1; this pipeline needs 2.17.0 or later"),
        ("2.17.0-rc.1", "needs 2.17.0 or later"),  # a pre-release of the minimum need not have the fix
        ("1.8.5", "is 1.8.5"),
        ("unknown", "not a release"),  # the API server's TAG_NAME default
        ("", "(none)"),
        ("master", "not a release"),
    ],
)
def test_an_older_or_unversioned_backend_is_refused_with_the_reason(tag, says):
    with pytest.raises(ConfigError, match="kubeflow/pipelines#1343") as raised:
        check_backend(tag, "https://kfp.example.org")
    assert says in str(raised.value) and "https://kfp.example.org" in str(raised.value)


def test_arguments_are_typed_by_the_packages_parameters(repo_root):
    parameters = package_parameters(repo_root / PACKAGE)
    parsed = parse_arguments(
        ["extraction_shards=8", 'gpu_node_selector={"pool": "a100"}', "data_pvc=fi-data", "workers=2"], parameters
    )
    assert parsed == {
        "extraction_shards": 8, "gpu_node_selector": {"pool": "a100"}, "data_pvc": "fi-data", "workers": 2
    }  # fmt: skip
    for bad, says in [
        ("extraction_shard=8", "no such parameter; it takes checkpoint_root"),
        ("params_yaml=x", "filled from --params/--set"),
        ("workers=two", "NUMBER_INTEGER"),
        ("gpu_tolerations={}", "expected a JSON list"),
        ("workers", "expected NAME=VALUE"),
    ]:
        with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
            parse_arguments([bad], parameters)


@pytest.mark.parametrize("kfp_api", ["2.16.1"], indirect=True)
def test_an_old_backend_stops_the_submission_before_anything_is_created(kfp_api, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert _submit(kfp_api) == 2
    err = capsys.readouterr().err
    assert f"error: the KFP backend at {kfp_api.url} is 2.16.1; this pipeline needs 2.17.0 or later" in err
    assert kfp_api.created_runs() == [] and not any(method == "POST" for method, _, _ in kfp_api.requests)


@pytest.mark.parametrize("kfp_api", ["unknown"], indirect=True)
def test_an_unversioned_backend_is_submitted_to_only_when_asked(kfp_api, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert _submit(kfp_api) == 2 and "--skip-version-check" in capsys.readouterr().err
    assert kfp_api.created_runs() == []
    assert _submit(kfp_api, "--skip-version-check") == 0
    assert json.loads(capsys.readouterr().out)["version_checked"] is False and len(kfp_api.created_runs()) == 1


@pytest.mark.parametrize("kfp_api", ["2.17.0"], indirect=True)
def test_a_current_backend_gets_one_run_with_the_params_once_and_typed_args(kfp_api, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    code = _submit(kfp_api, "--set", "classifier.epochs=3", "--arg", "extraction_shards=8", "--run-name", "fi-1")
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)  # stdout is the result alone: kfp's "details" lines went to stderr
    assert result["run_id"] == "run-0" and result["backend_version"] == "2.17.0"
    assert result["run_url"] == f"{kfp_api.url}/#/runs/details/run-0"
    (run,) = kfp_api.created_runs()
    assert run["display_name"] == "fi-1" and run["experiment_id"] == kfp_api.experiments["image-emotion"]
    parameters = run["runtime_config"]["parameters"]
    assert parameters["extraction_shards"] == 8 and parameters["mlflow_tracking_uri"] == MLFLOW
    assert yaml.safe_load(parameters["params_yaml"])["classifier"]["epochs"] == 3
    assert parameters["data_versions"]["data"] == "synthetic"  # the embedded default: a drawn set
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "image-emotion"
    assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]  # volumes, secrets, GPU tolerations


@pytest.mark.parametrize("kfp_api", ["2.17.0"], indirect=True)
def test_a_tracking_store_the_pods_cannot_reach_is_refused_before_any_request(kfp_api, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    code = cli.main(["run-pipeline", "--host", kfp_api.url, "--mlflow-tracking-uri", "sqlite:///mlflow.db"])
    assert code == 2 and "a cluster run needs an MLflow server the pods reach" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_the_minimum_backend_is_stated_where_users_read_it(repo_root):
    for doc in ("README.md", "docs/kubeflow.md"):
        assert f"{MIN_KFP_BACKEND} or later" in (repo_root / doc).read_text(), doc
