# Where a lane's log (make test's .cache/test-laneN.log) failed, in few lines:
# each Ansible task result that failed and was not ignored (its TASK line and
# up to 10 lines of the result), pytest's FAILED/ERROR lines, molecule's
# "Executed: Failed" and timeout lines, and the lane's own end line. CI shows
# only the end of what it printed; make test prints the last lines of this.
function emit() { print task; print blk; inb = 0 }
{ sub(/^\[lane[12]\] /, ""); sub(/^[0-9][0-9]:[0-9][0-9]:[0-9][0-9] /, ""); line = $0 }
inb && line ~ /^\.\.\.ignoring/ { inb = 0; next }
inb && line == "" { emit(); next }
inb { if (nb < 10) { blk = blk "\n" line; nb++ }; next }
/^TASK \[/ { task = line; next }
/^(fatal|failed): \[/ { inb = 1; nb = 1; blk = substr(line, 1, 300); next }
/^(FAILED|ERROR) [^-]|: Executed: Failed|: timed out after|^lane [12] \(/ { print substr(line, 1, 300) }
END { if (inb) emit() }
