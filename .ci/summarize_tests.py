#!/usr/bin/env python3
"""Prints `N passed, N failed` for one `bazel test` invocation.

Reads the invocation's build-event JSON (--build_event_json_file) for the test targets it ran,
and counts GoogleTest cases in each target's test.xml. A target that failed without a readable
test.xml (crash, timeout) counts as one failure; a failed build with no test results counts as
one failure too (exit status given as the second argument).
"""
import json
import sys
import urllib.parse
import xml.etree.ElementTree as ET


def count_cases(xml_path):
    root = ET.parse(xml_path).getroot()
    passed = failed = 0
    for case in root.iter("testcase"):
        if case.get("status") == "notrun" or case.find("skipped") is not None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        else:
            passed += 1
    return passed, failed


def main():
    bep_path, bazel_rc = sys.argv[1], int(sys.argv[2])
    passed = failed = 0
    failed_targets = []
    with open(bep_path) as f:
        events = [json.loads(line) for line in f if line.strip()]
    for event in events:
        result = event.get("testResult")
        if result is None:
            continue
        label = event["id"]["testResult"]["label"]
        xml = [o for o in result.get("testActionOutput", []) if o.get("name") == "test.xml"]
        counted = False
        if xml:
            path = urllib.parse.urlparse(xml[0]["uri"]).path
            try:
                p, fl = count_cases(path)
                passed, failed, counted = passed + p, failed + fl, (p + fl) > 0
            except (OSError, ET.ParseError):
                pass
        if result.get("status") != "PASSED":
            failed_targets.append(label)
            if not counted or fl == 0:
                failed += 1
        elif not counted:
            passed += 1
    if bazel_rc != 0 and failed == 0:
        failed += 1  # the build itself failed
        failed_targets.append("(build)")
    if failed_targets:
        print("failed: " + " ".join(failed_targets))
    print(f"{passed} passed, {failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
