#!/usr/bin/env bash
# Local Tryton ERP 8.2 server for trying out and testing the Tryton adapter.
#
# Everything lives under target/tryton/ in the repository (ignored by git):
#   venv/          Python virtual environment with trytond and the stock modules
#   trytond.conf   server configuration (SQLite, listen address)
#   db/NAME.sqlite the database
#   trytond.pid    pid of the running server, trytond.log its log
#
# Subcommands:
#   install  create the venv and install trytond + stock + account_stock_continental
#   setup    (re)create the database from scratch and bootstrap a company
#   start    start the server in the background and wait until it answers
#   stop     stop the server started by "start"
#   kill     kill it with SIGKILL (a crash, for tests)
#   url      print the JSON-RPC endpoint (http://127.0.0.1:PORT/NAME/rpc/)
#   all      install + (stop) + setup + start
#
# Settings (environment variables):
#   TRYTON_PORT      port to listen on          (default 8000)
#   TRYTON_DATABASE  database name              (default retail)
#   TRYTON_PASSWORD  password of the admin user (default admin)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$REPO/target/tryton"
VENV="$DIR/venv"
CONF="$DIR/trytond.conf"
DBDIR="$DIR/db"
PIDFILE="$DIR/trytond.pid"
LOGFILE="$DIR/trytond.log"
PORT="${TRYTON_PORT:-8000}"
NAME="${TRYTON_DATABASE:-retail}"
PASSWORD="${TRYTON_PASSWORD:-admin}"

log() { echo "tryton.sh: $*" >&2; }

cmd_install() {
    mkdir -p "$DIR"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtual environment"
        python3 -m venv "$VENV"
    fi
    # Skip pip entirely when all three packages are already present in 8.2.x.
    if "$VENV/bin/python" - <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
for name in ("trytond", "trytond_stock", "trytond_account_stock_continental"):
    if not version(name).startswith("8.2."):
        sys.exit(1)
EOF
    then
        log "trytond 8.2 already installed"
        return 0
    fi
    log "installing trytond 8.2 with the stock modules"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        'trytond==8.2.*' 'trytond-stock==8.2.*' \
        'trytond-account-stock-continental==8.2.*'
}

write_config() {
    mkdir -p "$DBDIR"
    cat > "$CONF" <<EOF
[database]
uri = sqlite://
path = $DBDIR

[web]
listen = 127.0.0.1:$PORT
EOF
}

is_running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

cmd_setup() {
    [ -x "$VENV/bin/trytond-admin" ] || { log "run '$0 install' first"; exit 1; }
    if is_running; then
        log "server is running; stop it before setup"
        exit 1
    fi
    write_config
    # Simplest idempotent behaviour: throw the old database away and build a
    # fresh one. Building takes about 40 s, so a pristine copy of the freshly
    # built database is kept and reused while nothing it depends on changed
    # (this script, the installed versions, the database name, the password).
    # SQLite keeps side files next to the database (write-ahead log, shared
    # memory index); stale ones would be replayed into the new file.
    rm -f "$DBDIR/$NAME.sqlite" "$DBDIR/$NAME.sqlite-wal" \
        "$DBDIR/$NAME.sqlite-shm" "$DBDIR/$NAME.sqlite-journal"
    local stamp cache="$DIR/pristine"
    stamp="$( { cat "$0"; "$VENV/bin/pip" freeze 2>/dev/null | grep -i '^trytond';
        echo "$NAME:$PASSWORD"; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$cache/$stamp.sqlite" ]; then
        cp "$cache/$stamp.sqlite" "$DBDIR/$NAME.sqlite"
        log "database '$NAME' restored from the pristine copy"
        return 0
    fi
    # SQLite needs the (empty) file to exist before trytond-admin runs.
    touch "$DBDIR/$NAME.sqlite"
    local passfile="$DIR/admin-password"
    printf '%s\n' "$PASSWORD" > "$passfile"
    log "creating database '$NAME' (modules stock, account_stock_continental)"
    TRYTONPASSFILE="$passfile" "$VENV/bin/trytond-admin" -c "$CONF" -d "$NAME" \
        --all --activate-dependencies -u stock account_stock_continental \
        --email admin@example.com >> "$DIR/setup.log" 2>&1 \
        || { log "trytond-admin failed, see $DIR/setup.log"; exit 1; }
    rm -f "$passfile"

    log "bootstrapping currency, company and admin user"
    "$VENV/bin/python" - "$CONF" "$NAME" <<'EOF'
# Uses trytond's own API directly on the database (no server needed).
import sys
from decimal import Decimal
from trytond import config
config.update_etc(sys.argv[1])
from trytond.pool import Pool
from trytond.transaction import Transaction

dbname = sys.argv[2]
Pool.start()
pool = Pool(dbname)
pool.init()

with Transaction().start(dbname, 0, context={}) as transaction:
    Currency = pool.get('currency.currency')
    Party = pool.get('party.party')
    Company = pool.get('company.company')
    User = pool.get('res.user')
    Location = pool.get('stock.location')

    # Currency EUR (the database starts without any currency).
    eur = Currency.search([('code', '=', 'EUR')])
    if eur:
        eur, = eur
    else:
        eur, = Currency.create([{
            'name': 'Euro', 'code': 'EUR', 'symbol': '€',
            'rounding': Decimal('0.01'), 'digits': 2,
        }])

    # The company, backed by a party of the same name.
    company = Company.search([('party.name', '=', 'Retail Platform')])
    if company:
        company, = company
    else:
        party, = Party.create([{'name': 'Retail Platform'}])
        company, = Company.create([{'party': party.id, 'currency': eur.id}])

    # The admin user works in that company (this is what the session's
    # context gets when the client calls model.res.user.get_preferences).
    admin, = User.search([('login', '=', 'admin')])
    User.write([admin], {
        'companies': [('add', [company.id])],
        'company': company.id,
    })

    # Default counterparts for shipments: a walk-in customer and a generic
    # supplier, each with one (empty) address, which shipments require.
    for name in ('Walk-in Customer', 'Generic Supplier'):
        if not Party.search([('name', '=', name)]):
            Party.create([{'name': name, 'addresses': [('create', [{}])]}])

    # Give the default lost-and-found location a code so it can be found by
    # code like the other standard locations (SUP, CUS, WH).
    Location.write(Location.search([
        ('type', '=', 'lost_found'), ('code', '=', None)]), {'code': 'LF'})

    # A location for goods in transit between two warehouses. Type lost_found
    # so that moves out of it need no assignment (see TRYTON-RPC.md).
    if not Location.search([('code', '=', 'TRANSIT')]):
        Location.create([{
            'name': 'Transit between warehouses', 'code': 'TRANSIT',
            'type': 'lost_found',
        }])
    transaction.commit()
print('tryton.sh: company id %s, currency EUR id %s' % (company.id, eur.id),
    file=sys.stderr)
EOF
    # Keep the pristine copy only when SQLite has folded its log back into
    # the file (it does so when the last connection closes).
    rm -rf "$cache"
    if [ ! -s "$DBDIR/$NAME.sqlite-wal" ]; then
        mkdir -p "$cache"
        cp "$DBDIR/$NAME.sqlite" "$cache/$stamp.sqlite"
    fi
}

cmd_start() {
    [ -f "$CONF" ] && [ -f "$DBDIR/$NAME.sqlite" ] \
        || { log "run '$0 setup' first"; exit 1; }
    if is_running; then
        log "already running (pid $(cat "$PIDFILE"))"
        return 0
    fi
    write_config   # picks up a changed TRYTON_PORT
    log "starting trytond on port $PORT"
    TRYTOND_DATABASE_NAMES="$NAME" nohup "$VENV/bin/trytond" -c "$CONF" \
        >> "$LOGFILE" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    # Wait (up to 60 s) until the server answers a cheap JSON-RPC call. trytond
    # loads the database's modules before it starts listening, so once it
    # answers, model calls on /NAME/rpc/ work too.
    local i
    for i in $(seq 1 120); do
        if ! is_running; then
            log "server died, see $LOGFILE"
            rm -f "$PIDFILE"
            exit 1
        fi
        if curl -sf -m 2 -H 'Content-Type: application/json' \
            -d '{"id":0,"method":"common.server.version","params":[]}' \
            "http://127.0.0.1:$PORT/rpc/" > /dev/null 2>&1; then
            log "ready at $(cmd_url)"
            return 0
        fi
        sleep 0.5
    done
    log "server did not answer within 60 s, see $LOGFILE"
    exit 1
}

cmd_stop() {
    if is_running; then
        local pid
        pid="$(cat "$PIDFILE")"
        kill "$pid"
        # Give it a few seconds to exit cleanly.
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        log "stopped (pid $pid)"
    else
        log "not running"
    fi
    rm -f "$PIDFILE"
}

# Kill the server at once (SIGKILL), as a crash would: tests use it to take
# the ERP away in the middle of posting.
cmd_kill() {
    if is_running; then
        local pid
        pid="$(cat "$PIDFILE")"
        kill -9 "$pid"
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        log "killed (pid $pid)"
    else
        log "not running"
    fi
    rm -f "$PIDFILE"
}

# The JSON-RPC endpoint of the database. Since trytond 7.x it is /NAME/rpc/;
# a POST to /NAME/ answers 405.
cmd_url() {
    echo "http://127.0.0.1:$PORT/$NAME/rpc/"
}

case "${1:-}" in
    install) cmd_install ;;
    setup) cmd_setup ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    kill) cmd_kill ;;
    url) cmd_url ;;
    all) cmd_install; cmd_stop 2>/dev/null; cmd_setup; cmd_start ;;
    *)
        echo "usage: $0 {install|setup|start|stop|kill|url|all}" >&2
        exit 2
        ;;
esac
