/* The reference /init for the boot benchmark: mount /proc and /dev, write the kernel's
 * uptime to the kernel log (so the console line carries the same printk timestamp as
 * basalt-init's and machined's lines), power off. Static: it needs nothing else. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
    char buf[64] = {0};
    char line[128];
    mkdir("/proc", 0755);
    mkdir("/dev", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int fd = open("/proc/uptime", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, buf, sizeof buf - 1) < 0) buf[0] = 0;
        close(fd);
    }
    double up = 0;
    sscanf(buf, "%lf", &up);
    snprintf(line, sizeof line, "bare-init: kernel uptime at init start: %.3f s\n", up);
    int kmsg = open("/dev/kmsg", O_WRONLY);
    if (kmsg >= 0) {
        if (write(kmsg, line, strlen(line)) < 0) fputs(line, stdout);
        close(kmsg);
    } else {
        fputs(line, stdout);
    }
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}
