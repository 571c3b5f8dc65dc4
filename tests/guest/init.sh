#!/bin/sh
# /init of Pier's tiny test guest (busybox sh as pid 1). See tests/guest/build.py.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /var/run /var/log
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
echo 1 > /proc/sys/kernel/printk 2>/dev/null
hostname pier-guest

# Modules in dependency order (written by build.py); the ones the kernel has built in are not listed.
while read -r module; do insmod "/lib/modules/$module" 2>/dev/null; done < /etc/modules.order

ip link set lo up

# Started once per network interface, by the watcher below.
dhcp() { udhcpc -i "$1" -b -q -t 20 -T 1 -A 2 -s /etc/udhcpc.sh -x hostname:pier-guest >/dev/null 2>&1 & }

# Polls for what appears after boot, or after a hotplug: NICs get DHCP, virtio serial ports get
# their /dev/virtio-ports/<name> link, hotplugged CPUs and memory are put online.
watch_devices() {
    mkdir -p /dev/virtio-ports /run/dhcp
    while :; do
        for port in /sys/class/virtio-ports/*; do
            [ -r "$port/name" ] || continue
            name=$(cat "$port/name")
            [ -n "$name" ] && [ ! -e "/dev/virtio-ports/$name" ] &&
                ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
        done
        for nic in /sys/class/net/*; do
            nic=${nic##*/}
            [ "$nic" = lo ] || [ -e "/run/dhcp/$nic" ] && continue
            touch "/run/dhcp/$nic"
            ip link set "$nic" up
            dhcp "$nic"
        done
        for online in /sys/devices/system/cpu/cpu*/online /sys/devices/system/memory/memory*/online; do
            [ -w "$online" ] && [ "$(cat "$online")" = 0 ] && echo 1 > "$online"
        done 2>/dev/null
        sleep 0.5
    done
}
watch_devices &

# The guest agent, restarted if it dies or until its port exists.
(
    while :; do
        if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
            qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run >/dev/null 2>&1
        fi
        sleep 0.5
    done
) &

# The ACPI power button (libvirt's shutdown in acpi mode) powers off.
acpid -c /etc/acpi -l /dev/null

# A root shell on the serial console, again and again.
(
    while :; do
        setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
        sleep 0.2
    done
) &

echo "pier-guest: up" > /dev/ttyS0
# pid 1 must never exit.
while :; do sleep 3600; done
