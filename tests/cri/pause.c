/*
 * The pod sandbox's init for the CRI tests: what Kubernetes' pause image does.
 *
 * PID 1 of a pod holds the pod's namespaces open, reaps the zombies of processes
 * re-parented to it (the pod shares one PID namespace), and exits 0 on SIGINT or
 * SIGTERM. Built with `gcc -static` into a single /pause on an otherwise empty image.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	int saved = errno;

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int handle(int sig, void (*fn)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = sig == SIGCHLD ? SA_NOCLDSTOP | SA_RESTART : SA_RESTART;
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	(void)argv;
	if (argc > 1) {
		fputs("pause: takes no arguments\n", stderr);
		return 2;
	}
	if (getpid() != 1)
		fputs("pause: warning: not PID 1, will not reap the pod's orphans\n", stderr);
	if (handle(SIGINT, on_stop) || handle(SIGTERM, on_stop) || handle(SIGCHLD, on_child)) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
}
