"""The data flywheel on the builder (issue 15): the collector nodes push hard examples to, `harvest` into a
YOLO dataset with pseudo-labels, and the review that turns them into labels. docs/FLYWHEEL.md."""
