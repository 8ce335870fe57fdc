#!/usr/bin/python3
"""Drives the real gptq-server from an independent gRPC implementation: Debian's python3-grpcio
with stubs generated at build time from proto/gptq/v1/quantization.proto by Debian's protoc +
grpc_python_plugin. Covers CreateJob (valid, invalid, idempotent), GetJob, ListJobs (labels,
pages) and WatchJob (a cancelled job's stream; with a worker and the shared data, a whole job
to SUCCEEDED).

Usage: python_client_test.py --bin-dir BUILD/bin --stubs DIR [--data-root DIR] [--worker-expected]
Exit: 0 pass, 1 fail, 77 skip (python3-grpcio missing).
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--data-root", default="")
    ap.add_argument("--worker-expected", action="store_true")
    args = ap.parse_args()

    try:
        import grpc  # noqa: F401
    except ImportError:
        print("SKIP: python3-grpcio is not installed (Debian package python3-grpcio)")
        sys.exit(77)
    sys.path.insert(0, args.stubs)
    import grpc
    from gptq.v1 import quantization_pb2 as pb
    from gptq.v1 import quantization_pb2_grpc as pb_grpc

    server_bin = os.path.join(args.bin_dir, "gptq-server")
    worker_bin = os.path.join(args.bin_dir, "gptq-worker")
    check(os.path.exists(server_bin), "gptq-server not built at " + server_bin)
    have_worker = os.path.exists(worker_bin)
    if args.worker_expected and not have_worker:
        fail("gptq-worker missing at " + worker_bin)
    data_root = args.data_root if args.data_root and os.path.isdir(
        os.path.join(args.data_root, "models")) else ""
    full_run = have_worker and bool(data_root)
    if not full_run:
        print("note: no worker or no shared data: the full-job watch is not run, "
              "the rest is" + ("" if have_worker else " (worker not built: no LibTorch)"))

    tmp = tempfile.mkdtemp(prefix="gptq-py-")
    model_dir = os.path.join(tmp, "model")
    outputs = os.path.join(tmp, "outputs")
    os.makedirs(model_dir)
    os.makedirs(outputs)
    port_file = os.path.join(tmp, "port")
    cmd = [server_bin, "--listen", "127.0.0.1:0", "--port-file", port_file,
           "--metrics-listen", "", "--db", os.path.join(tmp, "jobs.db"),
           "--local-workers", "1" if full_run else "0", "--heartbeat-seconds", "1"]
    if full_run:
        cmd += ["--worker-binary", worker_bin,
                "--worker-args", "--data-dir " + os.path.join(data_root, "text")]
    env = dict(os.environ)
    env.pop("GPTQ_AUTH_TOKEN", None)
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 30
        address = ""
        while time.time() < deadline and not address:
            if proc.poll() is not None:
                fail("gptq-server exited: " + open(log.name).read()[-3000:])
            if os.path.exists(port_file):
                address = open(port_file).read().strip()
            time.sleep(0.02)
        check(address, "no port file after 30 s")
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.QuantizationServiceStub(channel)
        run_checks(grpc, pb, stub, model_dir, outputs, data_root, full_run)
        print("PASS: python3-grpcio client: create/get/list/watch against " + address)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def run_checks(grpc, pb, stub, model_dir, outputs, data_root, full_run):
    # Invalid input: INVALID_ARGUMENT naming the field.
    bad = pb.CreateJobRequest(spec=pb.QuantizationSpec(
        model_uri=model_dir, output_uri=os.path.join(outputs, "bad"), bits=5))
    try:
        stub.CreateJob(bad, timeout=10)
        fail("bits=5 was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "bits=5: got %s" % e.code())
        check("spec.bits" in e.details(), "message does not name spec.bits: " + e.details())

    # Create (idempotent on request_id), get, list with labels and pages.
    req = pb.CreateJobRequest(
        spec=pb.QuantizationSpec(model_uri=model_dir, output_uri=os.path.join(outputs, "a"),
                                 bits=4, group_size=128),
        labels={"client": "python"}, request_id="py-1")
    a = stub.CreateJob(req, timeout=10)
    check(a.id != "", "empty id")
    check(a.state == pb.JOB_STATE_QUEUED, "new job not QUEUED: %s" % a.state)
    check(stub.CreateJob(req, timeout=10).id == a.id, "request_id not idempotent")
    b = stub.CreateJob(pb.CreateJobRequest(spec=pb.QuantizationSpec(
        model_uri=model_dir, output_uri=os.path.join(outputs, "b"))), timeout=10)
    got = stub.GetJob(pb.GetJobRequest(id=a.id), timeout=10)
    check(got.id == a.id and got.spec.bits == 4 and got.labels["client"] == "python",
          "GetJob returned %s" % got)
    check(not got.spec.HasField("damp_percent"), "unset fields must stay unset")
    labelled = stub.ListJobs(pb.ListJobsRequest(label_selector={"client": "python"}), timeout=10)
    check([j.id for j in labelled.jobs] == [a.id], "label filter: %s" % [j.id for j in labelled.jobs])
    ids, token = [], ""
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(page_size=1, page_token=token), timeout=10)
        check(len(page.jobs) <= 1, "page larger than page_size")
        ids += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    check(ids == [b.id, a.id], "pages newest first: %s vs %s" % (ids, [b.id, a.id]))
    try:
        stub.GetJob(pb.GetJobRequest(id="nope"), timeout=10)
        fail("unknown id found")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, "unknown id: %s" % e.code())

    # Watch a job while it is cancelled: the stream replays, follows and ends at CANCELLED.
    events = []
    done = threading.Event()

    def watch():
        for ev in stub.WatchJob(pb.WatchJobRequest(id=b.id), timeout=60):
            events.append(ev)
        done.set()

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.2)
    stub.CancelJob(pb.CancelJobRequest(id=b.id), timeout=10)
    check(done.wait(30), "WatchJob did not end after cancel")
    t.join()
    check(events and events[-1].WhichOneof("kind") == "state_change"
          and events[-1].state_change.to == pb.JOB_STATE_CANCELLED,
          "last event is not CANCELLED: %s" % events[-1:])
    check([e.sequence for e in events] == list(range(1, len(events) + 1)), "sequence gaps")
    stub.CancelJob(pb.CancelJobRequest(id=a.id), timeout=10)

    if not full_run:
        return
    # A whole job on stories260K (token-id calibration), watched to SUCCEEDED.
    rng = random.Random(7)
    spec = pb.QuantizationSpec(
        model_uri=os.path.join(data_root, "models", "stories260K-hf"),
        output_uri=os.path.join(outputs, "real"), bits=4, group_size=32,
        calibration=pb.CalibrationSpec(
            token_ids=pb.TokenIds(ids=[rng.randrange(3, 512) for _ in range(2048)]),
            nsamples=16, seqlen=64))
    job = stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=10)
    evs = list(stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=300))
    kinds = [e.WhichOneof("kind") for e in evs]
    check("module_progress" in kinds, "no module progress events")
    states = [e.state_change.to for e in evs if e.WhichOneof("kind") == "state_change"]
    check(pb.JOB_STATE_RUNNING in states, "never RUNNING: %s" % states)
    check(states[-1] == pb.JOB_STATE_SUCCEEDED, "did not succeed: %s / %s"
          % (states, stub.GetJob(pb.GetJobRequest(id=job.id)).error))
    final = stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)
    check(final.state == pb.JOB_STATE_SUCCEEDED, "GetJob state %s" % final.state)
    for f in final.results.files:
        path = os.path.join(final.results.output_location, f.path)
        check(os.path.getsize(path) == f.size_bytes, "size of " + path)
    # Watching from the middle replays only the tail.
    tail = list(stub.WatchJob(pb.WatchJobRequest(id=job.id, from_sequence=len(evs)), timeout=30))
    check([e.sequence for e in tail] == [len(evs)], "from_sequence replay: %s"
          % [e.sequence for e in tail])


if __name__ == "__main__":
    main()
