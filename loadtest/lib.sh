# Shared helpers for the load-test scripts (sourced, not run).

# A TCP port that is free right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Waits until something accepts connections on 127.0.0.1:PORT (up to 15 s).
wait_port() {
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2
  return 1
}

# Runs wrk against URL with $connections connections for $duration and prints
# "requests_per_second p99_milliseconds".
measure() {
  local output rps p99
  output=$(wrk -t1 -c"$connections" -d"$duration" --latency "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$output")
  echo "$rps $p99"
}
