#pragma once

// Happens-before edges that ThreadSanitizer cannot see on its own: Debian's gRPC is not built
// with TSan, so when flashkv hands an object to gRPC on one thread (StartWrite, Finish, a slice
// with a release callback) and gRPC hands it back on another (OnWriteDone, OnDone, the callback),
// the ordering gRPC guarantees goes through synchronisation TSan never observes. Each side marks
// its end: HandOff(object) just before giving the object to gRPC, TakeBack(object) first thing
// where gRPC gives it back. TSan then orders everything the first thread did before the hand-off
// before everything the second does after taking it back — and still reports any access that
// the hand-off does not order (a thread touching the object after giving it away). Without TSan
// both are empty inline functions.
//
// Thread-safety: any thread.

#if defined(__SANITIZE_THREAD__)
#define FLASHKV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FLASHKV_TSAN 1
#endif
#endif

#ifdef FLASHKV_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace flashkv {

inline void HandOff(const void* object) {
#ifdef FLASHKV_TSAN
  __tsan_release(const_cast<void*>(object));
#else
  (void)object;
#endif
}

inline void TakeBack(const void* object) {
#ifdef FLASHKV_TSAN
  __tsan_acquire(const_cast<void*>(object));
#else
  (void)object;
#endif
}

}  // namespace flashkv
