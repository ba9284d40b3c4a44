#!/bin/busybox sh
# /init of the `cargo xtask vm` guest (PID 1, busybox ash). Runs `fathom capture` on this
# kernel, makes one OOM kill and a few NO_SOCKET drops happen, then prints everything the
# runner parses between @@fathom-vm markers on the serial console, and powers off.
#
# /vm.conf (written by the runner) sets READY_SECS, CAPTURE_SECS, OOM_SECS, SETTLE_SECS,
# ALLOC_MIB, LIMIT_BYTES, UDP_PORT and UDP_COUNT.

/bin/busybox mkdir -p /bin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
. /vm.conf

say() { echo "@@fathom-vm $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
# tp_btf programs need neither, but fathom runs on hosts that have them.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Kernel messages (the OOM report) would interleave with ours: keep them in the ring buffer,
# printed in their own section at the end.
echo 1 >/proc/sys/kernel/printk
ip link set lo up

say "kernel $(uname -r)"
if [ -e /sys/kernel/btf/vmlinux ]; then say "btf yes"; else say "btf no"; fi

# RUST_BACKTRACE: a panic names where it happened.
RUST_BACKTRACE=1 /fathom --log-format json capture --output json --duration "${CAPTURE_SECS}s" \
    >/tmp/fathom.out 2>/tmp/fathom.err &
FATHOM=$!
READY=0
t=0
while :; do
    if grep -q '^fathom: ready' /tmp/fathom.err; then
        say "ready ${t}s"
        READY=1
        break
    fi
    if ! kill -0 "$FATHOM" 2>/dev/null; then
        say "exited-before-ready ${t}s"
        break
    fi
    if [ "$t" -ge "$READY_SECS" ]; then
        say "not-ready ${t}s"
        break
    fi
    sleep 1
    t=$((t + 1))
done

if [ "$READY" = 1 ]; then
    # (a) An OOM kill: `alloc` in a cgroup whose memory.max is LIMIT_BYTES.
    echo +memory >/sys/fs/cgroup/cgroup.subtree_control
    CG=/sys/fs/cgroup/fathom-vm-oom
    mkdir "$CG"
    echo "$LIMIT_BYTES" >"$CG/memory.max"
    # A group kill, as the kubelet sets up containers on cgroup v2: the OOM killer picks
    # alloc, and the kernel kills the idle sibling with it.
    echo 1 >"$CG/memory.oom.group"
    sh -c "echo \$\$ >$CG/cgroup.procs && exec sleep 600" &
    SIBLING=$!
    sleep 1
    # The child joins the cgroup, then execs alloc: $! is alloc's pid.
    sh -c "echo \$\$ >$CG/cgroup.procs && exec /alloc $ALLOC_MIB" &
    ALLOC=$!
    t=0
    while kill -0 "$ALLOC" 2>/dev/null && [ "$t" -lt "$OOM_SECS" ]; do
        sleep 1
        t=$((t + 1))
    done
    # Still alive: no OOM kill happened (say so below); do not leave it running.
    kill -KILL "$ALLOC" 2>/dev/null
    wait "$ALLOC"
    ALLOC_RC=$?
    kill -KILL "$SIBLING" 2>/dev/null
    wait "$SIBLING"
    say "oom pid=$ALLOC cgroup_id=$(stat -c %i "$CG") limit=$(cat "$CG/memory.max") rc=$ALLOC_RC" \
        "oom_kill=$(grep '^oom_kill ' "$CG/memory.events" | cut -d' ' -f2) sibling=$SIBLING"

    # (b) Datagrams to a closed loopback port: NO_SOCKET drops.
    SENT=$(/udpsend 127.0.0.1 "$UDP_PORT" "$UDP_COUNT")
    say "udp port=$UDP_PORT sent=$SENT netns=$(stat -L -c %i /proc/self/ns/net)"

    # Time for the events to cross the ring buffer and be printed (slow under emulation).
    sleep "$SETTLE_SECS"
fi
kill -TERM "$FATHOM" 2>/dev/null
# fathom exits within 2 s of SIGTERM; one that hangs is killed (EXIT=137) rather than
# leaving the runner to its timeout.
(sleep 30 && kill -KILL "$FATHOM" 2>/dev/null) &
wait "$FATHOM"
RC=$?

say "begin stderr"
cat /tmp/fathom.err
say "end stderr"
say "begin stdout"
cat /tmp/fathom.out
say "end stdout"
say "begin dmesg"
dmesg | grep -E 'oom-kill|BPF|bpf|BTF|BUG|WARNING|Oops|panic' | tail -n 40
say "end dmesg"
say "EXIT=$RC"
sync
poweroff -f
