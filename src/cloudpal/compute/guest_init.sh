#!/bin/sh
# CloudPal guest /init (busybox sh, PID 1). Protocol, one line each way on the virtio-serial
# control port: guest HELLO -> host GO (the boot snapshot is taken while we wait here, before any
# disk is mounted) -> guest READY once every app port listens. Then host SYNC -> SYNCED,
# PING -> PONG, STOP -> stop the app and power off; the app exiting -> EXIT <status>, power off.
# TIME <unix seconds>, any time, sets the clock (a restored guest wakes up with its snapshot's time).
# Console lines start with "cloudpal:" and go to ttyS0, the app's log.
set -u
PATH=/bin
export PATH

# ------------------------------------------------------------ inside the app's root (chroot)
# Run as `/.cloudpal/busybox sh /.cloudpal/init --start` with an empty environment: applies the
# image environment and working directory, checks the command exists, drops to APP_UID:APP_GID.
if [ "${1:-}" = "--start" ]; then
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    export PATH
    . /.cloudpal/app.sh
    # The image's environment may set any name, APP_UID included (.NET images do): everything of
    # ours is used or frozen before app_env runs.
    case "$APP_UID:$APP_GID" in
    *[!0-9:]* | :* | *:) echo "cloudpal: bad app user $APP_UID:$APP_GID"; exit 126 ;;
    esac
    eval "app_ids() { app_uid=$APP_UID; app_gid=$APP_GID; }"
    [ -d "$APP_WORKDIR" ] || /.cloudpal/busybox mkdir -p -- "$APP_WORKDIR" 2>/dev/null
    if ! cd -- "$APP_WORKDIR"; then
        echo "cloudpal: cannot enter the app's working directory $APP_WORKDIR"
        exit 126
    fi
    if [ "$APP_UID" = 0 ]; then HOME=/root; else HOME=/; fi
    export HOME
    app_env
    unset SHLVL OLDPWD 2>/dev/null
    app_find() {  # sets APP_PROG to where the command is, searching the image's PATH
        case $1 in
        */*) APP_PROG=$1; [ -f "$1" ] && [ -x "$1" ]; return ;;
        esac
        set -f
        old_ifs=$IFS
        IFS=:
        for dir in ${PATH:-}; do
            [ -n "$dir" ] || dir=.
            if [ -f "$dir/$1" ] && [ -x "$dir/$1" ]; then
                IFS=$old_ifs
                set +f
                APP_PROG=$dir/$1
                return 0
            fi
        done
        IFS=$old_ifs
        set +f
        return 1
    }
    app_start() {
        APP_PROG=
        if ! app_find "$1"; then
            echo "cloudpal: the app's command '$1' is not in the image (PATH=${PATH:-})"
            exit 127
        fi
        shift
        app_ids
        # The resolved path, so busybox's own applets never stand in for the image's programs.
        exec /.cloudpal/busybox nsenter -S "$app_uid" -G "$app_gid" -F -- "$APP_PROG" "$@"
    }
    app_exec
    exit 127
fi

# ------------------------------------------------------------ PID 1
log() { echo "cloudpal: $*"; }

halt_now() {
    sync
    poweroff -f
    reboot -f  # QEMU runs with -no-reboot: a reset ends it too
}

die() {
    log "$*"
    halt_now
}

set_time() {
    case $1 in
    *[!0-9]*) ;;
    *) date -u -s "@$1" >/dev/null 2>&1 ;;
    esac
}

wait_for() {  # wait_for PATH TICKS(10 ms each)
    n=0
    while [ ! -e "$1" ]; do
        n=$((n + 1))
        [ "$n" -le "$2" ] || return 1
        sleep 0.01
    done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
while read -r mod; do
    insmod "/cloudpal/modules/$mod" || log "cannot load module $mod"
done </cloudpal/modules.order

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2
fi

n=0
CTL=
while [ -z "$CTL" ]; do
    for port in /dev/vport*p1; do
        if [ -c "$port" ]; then CTL=$port; break; fi
    done
    n=$((n + 1))
    [ -n "$CTL" ] || [ "$n" -le 1000 ] || die "no control port appeared"
    [ -n "$CTL" ] || sleep 0.01
done
exec 3<>"$CTL"

# ------------------------------------------------------------ the boot snapshot point
echo HELLO >&3
while :; do
    if read -r cmd <&3; then
        case $cmd in
        GO) break ;;
        PING) echo PONG >&3 ;;
        TIME\ [0-9]*) set_time "${cmd#TIME }" ;;
        esac
    else
        sleep 0.05  # host not connected yet: EOF
    fi
done

[ -r /cloudpal/app.sh ] || die "no app config in the initramfs"
. /cloudpal/app.sh
echo "$APP_HOSTNAME" >/proc/sys/kernel/hostname

# Every command below is a fork+exec, which is slow under TCG: keep them few.
for disk in /dev/vda /dev/vdb; do
    wait_for "$disk" 500 || die "disk $disk did not appear"
done
mount -t ext4 -o ro /dev/vda /ro || die "cannot mount the app's root filesystem"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper/.cloudpal /rw/work
cp /bin/busybox /init /cloudpal/app.sh /rw/upper/.cloudpal/
mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /root ||
    die "cannot mount the overlay root filesystem"
for d in data proc sys dev tmp; do  # our mount points, whatever the image put there
    if [ -L "/root/$d" ] || { [ -e "/root/$d" ] && [ ! -d "/root/$d" ]; }; then rm -rf "/root/$d"; fi
done
mkdir -p /root/data /root/proc /root/sys /root/dev /root/tmp
mount -t ext4 /dev/vdb /root/data || die "cannot mount the data volume"
if [ "$APP_UID" != 0 ] && [ "$(stat -c %u /root/data)" = 0 ] &&
    [ "$(ls -A /root/data)" = "lost+found" ]; then
    chown "$APP_UID:$APP_GID" /root/data  # a fresh volume belongs to the app's user
fi
mount -t proc proc /root/proc
mount -t sysfs -o ro sysfs /root/sys
mount -t tmpfs -o mode=0755,nosuid tmpfs /root/dev
cp -a /cloudpal/dev/. /root/dev/  # null zero full random urandom tty, pts/ shm/ and the fd links
mount -t devpts -o newinstance,ptmxmode=0666 devpts /root/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /root/dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /root/tmp
if [ ! -e /root/etc/hosts ] && [ ! -L /root/etc/hosts ] && [ -d /root/etc ] && [ ! -L /root/etc ]; then
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >/root/etc/hosts
fi

# ------------------------------------------------------------ run the app
log "starting $APP_NAME"
env -i /bin/busybox chroot /root /.cloudpal/busybox sh /.cloudpal/init --start </dev/null 3>&- &
APP_PID=$!

finish() {  # after the app is gone: stop stragglers, flush the volume, power off
    kill -KILL -1 2>/dev/null
    sync
    umount /root/data 2>/dev/null || mount -o remount,ro /root/data 2>/dev/null
    halt_now
}

listening() {  # is TCP port $1 in LISTEN state? builtins only: no fork per poll
    for table in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$table" ] || continue
        while read -r _sl laddr _raddr state _rest; do
            case $state$laddr in
            0A*:[0-9A-F][0-9A-F][0-9A-F][0-9A-F]) [ "$((0x${laddr##*:}))" = "$1" ] && return 0 ;;
            esac
        done <"$table"
    done
    return 1
}

(
    while :; do
        all=1
        for p in $APP_PORTS; do
            listening "$p" || { all=0; break; }
        done
        [ "$all" = 1 ] && break
        sleep 0.02
    done
    log "ready"
    echo READY >&3
) &
POLL_PID=$!

(
    while :; do
        if ! read -r cmd <&3; then
            sleep 0.1
            continue
        fi
        case $cmd in
        SYNC) sync; echo SYNCED >&3 ;;
        PING) echo PONG >&3 ;;
        TIME\ [0-9]*) set_time "${cmd#TIME }" ;;
        STOP)
            : >/run/stopping
            log "stopping $APP_NAME"
            kill -TERM "$APP_PID" 2>/dev/null
            n=0
            while [ -e "/proc/$APP_PID" ] && [ "$n" -lt 250 ]; do
                sleep 0.02
                n=$((n + 1))
            done
            finish
            ;;
        esac
    done
) &

wait "$APP_PID"
status=$?
if [ -e /run/stopping ]; then
    while :; do sleep 1; done  # the control loop is powering off
fi
kill "$POLL_PID" 2>/dev/null
log "app exited with status $status"
echo "EXIT $status" >&3
finish
