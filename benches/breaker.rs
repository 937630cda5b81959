//! Circuit-breaker cost on the request path: one `try_acquire` and one `record` of a success
//! on a closed breaker, from one thread and from several threads sharing one breaker (the
//! case of a hot endpoint served by every worker thread).
//!
//! `now` is captured once per thread so that the figures are the breaker's own cost, not the
//! clock's. With several threads each runs the full iteration count at once and the slowest
//! thread's time is reported, so "time" is the per-request cost a thread sees under
//! contention and "thrpt" is requests per second across all threads.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use loom::upstream::breaker::{BreakerSettings, CircuitBreaker};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// One request's worth of breaker calls.
fn admit_and_record(breaker: &CircuitBreaker, now: Instant) {
    let (admission, transition) = breaker.try_acquire(black_box(now));
    black_box(transition);
    if let Some(admission) = admission {
        black_box(breaker.record(admission, true, now));
    }
}

/// Runs `iterations` requests on each of `threads` threads at once; returns the slowest
/// thread's time, measured after all threads are spawned and released together.
fn contended(breaker: &CircuitBreaker, threads: usize, iterations: u64) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let now = Instant::now();
                    let start = Instant::now();
                    for _ in 0..iterations {
                        admit_and_record(breaker, now);
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("bench worker panicked"))
            .max()
            .unwrap_or_default()
    })
}

fn closed_breaker(criterion: &mut Criterion) {
    let variants = [
        ("consecutive", BreakerSettings::default()),
        (
            "consecutive_and_ratio",
            BreakerSettings {
                failure_ratio: Some(0.5),
                ..BreakerSettings::default()
            },
        ),
    ];
    for (name, settings) in variants {
        let mut group = criterion.benchmark_group(format!("breaker_closed/{name}"));
        let breaker = CircuitBreaker::new(settings);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter("1_thread"), |bencher| {
            let now = Instant::now();
            bencher.iter(|| admit_and_record(&breaker, now));
        });
        for threads in [2, 4] {
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_function(
                BenchmarkId::from_parameter(format!("{threads}_threads")),
                |bencher| {
                    bencher.iter_custom(|iterations| contended(&breaker, threads, iterations))
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, closed_breaker);
criterion_main!(benches);
