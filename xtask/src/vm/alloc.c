/* `alloc <MiB>`: maps and touches memory in 1 MiB steps (memset, so the pages are really
   charged to the memory cgroup) until <MiB> MiB are allocated, then sleeps. Inside a cgroup
   whose memory.max is smaller, the OOM killer kills it at a page fault. The same program as
   the integration tests' `alloc` (tests/src/progs.rs), without its container mode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

int main(int argc, char **argv) {
    char *end = NULL;
    long mib = argc == 2 ? strtol(argv[1], &end, 10) : -1;
    if (argc != 2 || end == argv[1] || *end != '\0' || mib < 0) {
        fprintf(stderr, "usage: alloc <MiB>\n");
        return 2;
    }
    for (long i = 0; i < mib; i++) {
        char *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            break;
        memset(p, (int)(0x5a ^ (i & 0xff)), MIB);
    }
    for (;;)
        pause();
}
