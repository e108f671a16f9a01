#!/usr/bin/env python3
"""Joins the GoogleTest XML of every rank of every MPI run into one file for Bazel.

  merge_rank_xml.py OUT CHECKS TAG=RANK_XML ...

OUT: the merged XML (Bazel's XML_OUTPUT_FILE). CHECKS: lines "name PASS|FAIL message" of the
wrapper's own checks (whole runs, the AbortAll probe), each becoming a test case of the suite
`mpi_test_sh`. Each TAG=RANK_XML (tag e.g. np2.rank1) contributes its suites renamed TAG.<suite>;
a missing or unreadable file (a rank that crashed or was killed) becomes one failed case, so it
is counted rather than silently dropped, and makes the exit status 1.
"""
import sys
import xml.etree.ElementTree as ET


def failed_case(suite_name, case_name, message):
    suite = ET.Element("testsuite", name=suite_name, tests="1", failures="1")
    case = ET.SubElement(suite, "testcase", name=case_name, classname=suite_name, status="run")
    ET.SubElement(case, "failure", message=message)
    return suite


def main():
    out_path, checks_path, rank_xmls = sys.argv[1], sys.argv[2], sys.argv[3:]
    merged = ET.Element("testsuites", name="AllTests")
    missing = 0
    for item in rank_xmls:
        tag, path = item.split("=", 1)
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            merged.append(failed_case(tag, "results", f"no GoogleTest XML from {tag}: {e}"))
            print(f"merge_rank_xml: no GoogleTest XML from {tag}: {e}", file=sys.stderr)
            missing += 1
            continue
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            suite.set("name", f"{tag}.{suite.get('name')}")
            for case in suite.iter("testcase"):
                case.set("classname", f"{tag}.{case.get('classname')}")
            merged.append(suite)
    shell = ET.SubElement(merged, "testsuite", name="mpi_test_sh")
    with open(checks_path) as f:
        for line in f:
            if not line.strip():
                continue
            name, verdict, message = (line.rstrip("\n").split(" ", 2) + [""])[:3]
            case = ET.SubElement(shell, "testcase", name=name, classname="mpi_test_sh", status="run")
            if verdict != "PASS":
                ET.SubElement(case, "failure", message=message)
    ET.ElementTree(merged).write(out_path, encoding="UTF-8", xml_declaration=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
