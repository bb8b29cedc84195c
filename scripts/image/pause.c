/* The pod sandbox's PID 1 (what registry.k8s.io/pause does): hold the pod's namespaces open, reap the
 * children that get re-parented to it, and exit 0 on SIGTERM/SIGINT so a pod stops at once.
 * Built static (gcc -static) into an image FROM scratch by scripts/image/pause.sh. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    /* Bounded by the number of exited children: waitpid returns 0 or -1 once none is left. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static int handle(int sig, void (*fn)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fn;
    sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (modelarts-agent scripts/image/pause.c)");
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: warning: not PID 1, children will not be re-parented here\n");
    }
    if (handle(SIGINT, on_stop) || handle(SIGTERM, on_stop) || handle(SIGCHLD, on_child)) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
