/* The consumer tests' program: includes the installed header, links the
 * installed library (shared or static) and checks the version it reports. */
#include <asock.h>

#include <stdio.h>
#include <string.h>

#ifndef ASOCK_EXPECTED_VERSION
#define ASOCK_EXPECTED_VERSION "0.1.0"
#endif

int main(void) {
    const char *version = asock_version();
    if (version == NULL || strcmp(version, ASOCK_EXPECTED_VERSION) != 0) {
        fprintf(stderr, "consumer: asock_version() = \"%s\", want \"%s\"\n",
                version ? version : "(null)", ASOCK_EXPECTED_VERSION);
        return 1;
    }
    if (strcmp(asock_error_name(ASOCK_E_ARGUMENT_NULL), "ArgumentNull") != 0) {
        fprintf(stderr, "consumer: asock_error_name(ASOCK_E_ARGUMENT_NULL) = \"%s\"\n",
                asock_error_name(ASOCK_E_ARGUMENT_NULL));
        return 1;
    }
    printf("consumer: asock %s\n", version);
    return 0;
}
