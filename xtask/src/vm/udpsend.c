/* `udpsend <IPv4> <port> <count>`: sends <count> small UDP datagrams to <IPv4>:<port>, 50 ms
   apart. Sent to a port nobody listens on, each is dropped by the kernel with reason
   NO_SOCKET (__udp4_lib_rcv) on kernels that have drop reasons (>= 5.17). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: udpsend <IPv4> <port> <count>\n");
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "udpsend: bad address '%s'\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("udpsend: socket");
        return 1;
    }
    int count = atoi(argv[3]), sent = 0;
    for (int i = 0; i < count; i++) {
        if (sendto(fd, "fathom-vm", 9, 0, (struct sockaddr *)&to, sizeof to) == 9)
            sent++;
        usleep(50 * 1000);
    }
    printf("%d\n", sent);
    return sent == count ? 0 : 1;
}
