"""moto's server answering one request at a time.

DynamoDB applies a conditional write atomically: of eight concurrent `PutItem`s on one key with
`attribute_not_exists(pk)`, exactly one succeeds. moto's own `moto_server` serves each request on its own
thread and checks the condition and writes in two steps, so two of them can both succeed (seen about once in a
few hundred races). The lease tests rely on DynamoDB's behaviour, so the local stack serves moto without
threads; DynamoDB requests are short, and LocalStack keeps its own connections to it.
"""

import argparse

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
