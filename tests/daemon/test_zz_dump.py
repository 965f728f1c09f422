from pathlib import Path
def test_dump(tap_logs, bus_run, library_run, pharmacy_run, tearing_run, out_of_service_run):
    Path("/tmp/scratch/logs.jsonl").write_text(tap_logs.text())
    import json
    Path("/tmp/scratch/records.json").write_text(json.dumps([bus_run.queued, library_run.queued, pharmacy_run.queued, tearing_run.queued, out_of_service_run.published, pharmacy_run.answers], ensure_ascii=False, indent=1))
