"""The hardware-KVM lane (`make test-hw`): the suite inside an L1 Linux with a real SVM KVM."""
