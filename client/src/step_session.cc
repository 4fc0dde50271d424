#include "flashkv/client/step_session.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "flashkv/client/status.h"
#include "request_encoding.h"

namespace flashkv {

StepExpectation ExpectationFor(const v1::StepRequest& request) {
  StepExpectation expected;
  expected.step_id = request.step_id();
  if (request.has_batch()) {
    const v1::StepBatch& batch = request.batch();
    expected.batch = true;
    expected.batch_out_shape.assign(batch.q().shape().begin(), batch.q().shape().end());
    expected.batch_out_dtype = batch.q().dtype();
    if (batch.has_out()) {
      expected.batch_out_region = RegionSlice{batch.out().region_id(), batch.out().offset()};
    }
  }
  expected.out_shapes.reserve(request.entries_size());
  expected.out_dtypes.reserve(request.entries_size());
  expected.out_regions.reserve(request.entries_size());
  for (const v1::StepEntry& entry : request.entries()) {
    expected.out_shapes.emplace_back(entry.q().shape().begin(), entry.q().shape().end());
    expected.out_dtypes.push_back(entry.q().dtype());
    std::optional<RegionSlice> out;
    if (entry.has_out()) out = RegionSlice{entry.out().region_id(), entry.out().offset()};
    expected.out_regions.push_back(out);
  }
  return expected;
}

StepExpectation ExpectationFor(uint64_t step_id, absl::Span<const StepInput> entries) {
  StepExpectation expected;
  expected.step_id = step_id;
  expected.out_shapes.reserve(entries.size());
  expected.out_dtypes.reserve(entries.size());
  expected.out_regions.reserve(entries.size());
  for (const StepInput& entry : entries) {
    expected.out_shapes.emplace_back(entry.q.shape().begin(), entry.q.shape().end());
    expected.out_dtypes.push_back(ToProtoDType(entry.q.dtype()));
    expected.out_regions.push_back(entry.out);
  }
  return expected;
}

StepExpectation ExpectationFor(uint64_t step_id, const StepBatchInput& batch) {
  StepExpectation expected;
  expected.step_id = step_id;
  expected.batch = true;
  expected.batch_out_shape.assign(batch.q.shape().begin(), batch.q.shape().end());
  expected.batch_out_dtype = ToProtoDType(batch.q.dtype());
  expected.batch_out_region = batch.out;
  return expected;
}

StepTiming TimingOf(const v1::StepResponse& response) {
  return StepTiming{absl::Nanoseconds(response.kernel_ns()),
                    absl::Nanoseconds(response.server_ns()), absl::Nanoseconds(response.queue_ns()),
                    absl::Nanoseconds(response.launch_ns())};
}

namespace {

// An output the request asked to be written into a region: the response names that slice and
// carries no bytes.
absl::Status CheckRegionOutput(const std::string& field, const RegionSlice& want,
                               const v1::Tensor& out) {
  if (!out.has_region()) {
    return absl::InternalError(absl::StrCat(field, " came as bytes; the request asked for region ",
                                            want.region_id, " offset ", want.offset));
  }
  const RegionSlice got{out.region().region_id(), out.region().offset()};
  if (!(got == want) || !out.data().empty()) {
    return absl::InternalError(absl::StrCat(
        field, " names region ", got.region_id, " offset ", got.offset, " (", out.data().size(),
        " bytes inline); the request asked for region ", want.region_id, " offset ", want.offset));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckStepResponse(const StepExpectation& expected, const v1::StepResponse& response) {
  if (response.step_id() != expected.step_id) {
    return absl::InternalError(absl::StrCat("step response out of order: expected step_id ",
                                            expected.step_id, ", got ", response.step_id()));
  }
  if (expected.batch != response.has_batch_out()) {
    return absl::InternalError(absl::StrCat("step ", expected.step_id, ": ",
                                            expected.batch
                                                ? "no batch_out for a batched request"
                                                : "a batch_out for a request of entries"));
  }
  if (expected.batch) {
    const v1::Tensor& out = response.batch_out();
    const std::string field = absl::StrCat("step ", expected.step_id, " batch_out");
    if (expected.batch_out_region.has_value()) {
      if (absl::Status s = CheckRegionOutput(field, *expected.batch_out_region, out); !s.ok()) {
        return s;
      }
    } else if (out.has_region()) {
      return absl::InternalError(
          absl::StrCat(field, " names a region; the request asked for bytes"));
    } else if (absl::Status s = ValidateTensorProto(out, field); !s.ok()) {
      return absl::InternalError(s.message());
    }
    if (out.dtype() != expected.batch_out_dtype ||
        !std::equal(out.shape().begin(), out.shape().end(), expected.batch_out_shape.begin(),
                    expected.batch_out_shape.end())) {
      return absl::InternalError(absl::StrCat(
          field, " is ", ShapeString(out.shape()), " of dtype ", out.dtype(), "; batch.q is ",
          ShapeString(expected.batch_out_shape), " of dtype ", expected.batch_out_dtype));
    }
  }
  if (static_cast<size_t>(response.out_size()) != expected.out_shapes.size()) {
    return absl::InternalError(absl::StrCat("step ", expected.step_id, ": ", response.out_size(),
                                            " outputs for ", expected.out_shapes.size(),
                                            " entries"));
  }
  for (int i = 0; i < response.out_size(); ++i) {
    const v1::Tensor& out = response.out(i);
    const std::string field = absl::StrCat("step ", expected.step_id, " out[", i, "]");
    const std::optional<RegionSlice>& region =
        i < static_cast<int>(expected.out_regions.size()) ? expected.out_regions[i] : std::nullopt;
    if (region.has_value()) {
      if (absl::Status s = CheckRegionOutput(field, *region, out); !s.ok()) return s;
    } else if (out.has_region()) {
      return absl::InternalError(
          absl::StrCat(field, " names a region; the request asked for bytes"));
    } else if (absl::Status s = ValidateTensorProto(out, field); !s.ok()) {
      return absl::InternalError(s.message());
    }
    if (out.dtype() != expected.out_dtypes[i]) {
      return absl::InternalError(absl::StrCat(field, ".dtype (", out.dtype(),
                                              ") != the entry's q dtype (", expected.out_dtypes[i],
                                              ")"));
    }
    if (!std::equal(out.shape().begin(), out.shape().end(), expected.out_shapes[i].begin(),
                    expected.out_shapes[i].end())) {
      return absl::InternalError(absl::StrCat(field, ".shape ", ShapeString(out.shape()),
                                              " != the entry's q shape ",
                                              ShapeString(expected.out_shapes[i])));
    }
  }
  return absl::OkStatus();
}

// The gRPC side of the stream, on its own completion queue (see the header for why). Writes go
// out one at a time (gRPC allows one outstanding write) from a queue; one read is outstanding
// from the start. Events are handled by whichever thread drives the queue: Read() and AwaitDone()
// block in it, Write() polls it. One driver at a time (drive_mu_); the state is under mu_.
// Lock order: drive_mu_ before mu_. gRPC operations are started under mu_: with a completion
// queue nothing runs inline, so that is safe.
class StepSession::Stream {
 public:
  Stream() { context_.set_initial_metadata_corked(true); }
  grpc::ClientContext* context() { return &context_; }
  grpc::CompletionQueue* cq() { return &cq_; }

  // Before the first Write, which carries the initial metadata: an uncorked start would use the
  // call's write operation set, and a write started before it completes is an API misuse.
  void Start(std::unique_ptr<Call> call) {
    absl::MutexLock lock(&mu_);
    call_ = std::move(call);
    call_->StartCall(nullptr);  // corked (see context()): no event
    call_->Read(&read_buffer_, Tag(kRead));
  }

  // Queues a write. Returns the stream's status instead when it already failed.
  absl::Status Write(grpc::ByteBuffer request) {
    // Completed writes not yet handled would hold this one in the queue: handle them first, if
    // no reader is driving already (it handles them as they come).
    if (drive_mu_.TryLock()) {
      while (DriveOnce(absl::InfinitePast())) {
      }
      drive_mu_.Unlock();
    }
    absl::MutexLock lock(&mu_);
    if (done_ && !status_.ok()) return FromGrpcStatus(status_, "StepStream");
    if (done_ || read_closed_) return absl::FailedPreconditionError("StepStream already finished");
    if (write_in_flight_) {
      queue_.push_back(std::move(request));
      return absl::OkStatus();
    }
    write_in_flight_ = true;
    writing_ = std::move(request);
    call_->Write(writing_, Tag(kWrite));
    return absl::OkStatus();
  }

  // Waits for the next response, or for the end of the stream when none is left, or `timeout`.
  absl::StatusOr<v1::StepResponse> Read(absl::Duration timeout) {
    const absl::Time deadline =
        timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
    absl::MutexLock drive(&drive_mu_);
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (!responses_.empty()) {
          v1::StepResponse response = std::move(responses_.front());
          responses_.pop_front();
          return response;
        }
        if (done_) {
          if (!status_.ok()) return FromGrpcStatus(status_, "StepStream");
          return absl::InternalError("StepStream ended with OK before answering every request");
        }
      }
      if (!DriveOnce(deadline)) {
        context_.TryCancel();
        return absl::DeadlineExceededError(absl::StrCat("StepStream: no response within ",
                                                        absl::FormatDuration(timeout),
                                                        "; stream cancelled"));
      }
    }
  }

  // Half-closes once every queued write has gone out.
  void CloseWrites() {
    absl::MutexLock lock(&mu_);
    if (done_ || read_closed_ || writes_done_) return;
    writes_done_ = true;
    if (!write_in_flight_) call_->WritesDone(Tag(kWritesDone));  // else after the last write
  }

  // Drives the queue until the call is over; returns its status.
  grpc::Status AwaitDone() {
    absl::MutexLock drive(&drive_mu_);
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (done_) return status_;
      }
      DriveOnce(absl::InfiniteFuture());
    }
  }

  bool done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }

  ~Stream() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

 private:
  enum Op { kRead, kWrite, kWritesDone, kFinish };  // one of each outstanding at most
  static void* Tag(Op op) { return reinterpret_cast<void*>(static_cast<intptr_t>(op) + 1); }

  // With drive_mu_ held: handles one event, waiting for it until `deadline` (InfinitePast: only
  // one already there). Returns false when none came.
  bool DriveOnce(absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(drive_mu_) {
    void* tag;
    bool ok;
    const grpc::CompletionQueue::NextStatus next =
        deadline == absl::InfiniteFuture()
            ? (cq_.Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                   : grpc::CompletionQueue::SHUTDOWN)
            : cq_.AsyncNext(&tag, &ok,
                            deadline == absl::InfinitePast() ? absl::ToChronoTime(absl::UnixEpoch())
                                                             : absl::ToChronoTime(deadline));
    if (next != grpc::CompletionQueue::GOT_EVENT) return false;
    absl::MutexLock lock(&mu_);
    switch (static_cast<Op>(reinterpret_cast<intptr_t>(tag) - 1)) {
      case kWritesDone:
        break;  // a failure shows in the read that follows
      case kRead:
        if (!ok) {  // the stream ended: collect its status
          read_closed_ = true;
          call_->Finish(&finish_status_, Tag(kFinish));
          break;
        }
        responses_.push_back(std::move(read_buffer_));
        read_buffer_.Clear();
        call_->Read(&read_buffer_, Tag(kRead));
        break;
      case kWrite:
        if (ok && !queue_.empty()) {
          writing_ = std::move(queue_.front());
          queue_.pop_front();
          call_->Write(writing_, Tag(kWrite));
          break;
        }
        // !ok: the stream is broken; the read brings the status. Drop what is queued.
        queue_.clear();
        write_in_flight_ = false;
        if (ok && writes_done_ && !read_closed_) call_->WritesDone(Tag(kWritesDone));
        break;
      case kFinish:
        status_ = finish_status_;
        done_ = true;
        break;
    }
    return true;
  }

  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  absl::Mutex drive_mu_;
  absl::Mutex mu_;
  std::unique_ptr<Call> call_ ABSL_GUARDED_BY(mu_);
  v1::StepResponse read_buffer_ ABSL_GUARDED_BY(mu_);  // owned by the outstanding read
  grpc::ByteBuffer writing_ ABSL_GUARDED_BY(mu_);      // owned by the outstanding write
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);    // owned by the outstanding Finish
  std::deque<grpc::ByteBuffer> queue_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<v1::StepResponse> responses_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

StepSession::StepSession(StepSessionOptions options, Starter start)
    : options_(std::move(options)), start_(std::move(start)) {}

StepSession::~StepSession() {
  if (stream_ == nullptr) return;
  if (!stream_->done()) stream_->context()->TryCancel();
  stream_->AwaitDone();  // the call's operations must be over before its queue goes
}

absl::StatusOr<uint64_t> StepSession::Prepare(uint64_t step_id,
                                              const std::string* first_sequence_id) {
  if (finished_) return absl::FailedPreconditionError("StepSession already finished");
  if (static_cast<int>(expected_.size()) >= options_.max_in_flight) {
    return absl::FailedPreconditionError(absl::StrCat(
        "StepSession: max_in_flight (", options_.max_in_flight, ") requests await Receive()"));
  }
  if (stream_ == nullptr) {
    std::string routing_key = options_.routing_key;
    if (routing_key.empty()) {
      if (first_sequence_id == nullptr) {
        return absl::InvalidArgumentError(
            "StepSession: the first request has no entries to take the routing key from; set "
            "StepSessionOptions::routing_key");
      }
      routing_key = *first_sequence_id;
    }
    auto stream = std::make_unique<Stream>();
    absl::StatusOr<std::unique_ptr<Call>> call =
        start_(stream->context(), stream->cq(), routing_key);
    if (!call.ok()) return call.status();
    stream_ = std::move(stream);
    stream_->Start(*std::move(call));
  }
  return step_id != 0 ? step_id : next_step_id_++;
}

absl::Status StepSession::Write(grpc::ByteBuffer request, StepExpectation expectation) {
  if (absl::Status s = stream_->Write(std::move(request)); !s.ok()) return s;
  expected_.push_back(std::move(expectation));
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> StepSession::Send(v1::StepRequest request) {
  absl::MutexLock lock(&mu_);
  const std::string* first_id = request.entries_size() > 0 ? &request.entries(0).sequence_id()
                                : request.batch().sequence_ids_size() > 0
                                    ? &request.batch().sequence_ids(0)
                                    : nullptr;
  absl::StatusOr<uint64_t> id = Prepare(request.step_id(), first_id);
  if (!id.ok()) return id.status();
  request.set_step_id(*id);
  StepExpectation expectation = ExpectationFor(request);
  grpc::ByteBuffer buffer;
  bool own_buffer;
  const grpc::Status serialized =
      grpc::SerializationTraits<v1::StepRequest>::Serialize(request, &buffer, &own_buffer);
  if (!serialized.ok()) return FromGrpcStatus(serialized, "StepStream");
  if (absl::Status s = Write(std::move(buffer), std::move(expectation)); !s.ok()) return s;
  return *id;
}

absl::StatusOr<uint64_t> StepSession::Send(uint32_t layer, absl::Span<const StepInput> entries,
                                           uint64_t step_id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<uint64_t> id =
      Prepare(step_id, entries.empty() ? nullptr : &entries.front().sequence_id);
  if (!id.ok()) return id.status();
  if (absl::Status s =
          Write(client_internal::EncodeStep(layer, *id, entries), ExpectationFor(*id, entries));
      !s.ok()) {
    return s;
  }
  return *id;
}

absl::StatusOr<uint64_t> StepSession::Send(uint32_t layer, const StepBatchInput& batch,
                                           uint64_t step_id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<uint64_t> id =
      Prepare(step_id, batch.sequence_ids.empty() ? nullptr : &batch.sequence_ids.front());
  if (!id.ok()) return id.status();
  if (absl::Status s =
          Write(client_internal::EncodeStepBatch(layer, *id, batch), ExpectationFor(*id, batch));
      !s.ok()) {
    return s;
  }
  return *id;
}

absl::StatusOr<uint64_t> StepSession::SendPass(uint32_t layer, uint64_t pass_id,
                                               const StepBatchInput& batch, uint64_t step_id) {
  if (pass_id == 0) return absl::InvalidArgumentError("SendPass: pass_id must not be 0");
  const bool names =
      !batch.sequence_ids.empty() || !batch.num_tokens.empty() || !batch.token_ids.empty();
  if (layer == 0 && batch.sequence_ids.empty()) {
    return absl::InvalidArgumentError("SendPass: layer 0 begins the pass and must name sequences");
  }
  if (layer > 0 && names) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SendPass: layer ", layer, " of pass ", pass_id,
        " must leave sequence_ids, num_tokens and token_ids empty (layer 0 named them)"));
  }
  if (batch.pass_id == pass_id) return Send(layer, batch, step_id);
  // A copy (ids and views) only for a caller that left batch.pass_id unset.
  StepBatchInput with_id = batch;
  with_id.pass_id = pass_id;
  return Send(layer, with_id, step_id);
}

absl::StatusOr<v1::StepResponse> StepSession::Receive() {
  Stream* stream;
  {
    absl::MutexLock lock(&mu_);
    if (expected_.empty()) {
      return absl::FailedPreconditionError("StepSession: no request in flight");
    }
    stream = stream_.get();
  }
  absl::StatusOr<v1::StepResponse> response = stream->Read(options_.response_timeout);
  absl::MutexLock lock(&mu_);
  if (expected_.empty()) return absl::FailedPreconditionError("StepSession finished meanwhile");
  StepExpectation expected = std::move(expected_.front());
  expected_.pop_front();
  if (!response.ok()) return response.status();
  if (absl::Status s = CheckStepResponse(expected, *response); !s.ok()) {
    // The stream no longer matches our requests; nothing after this can be trusted.
    stream->context()->TryCancel();
    return s;
  }
  return response;
}

absl::StatusOr<v1::StepResponse> StepSession::Step(v1::StepRequest request) {
  absl::StatusOr<uint64_t> sent = Send(std::move(request));
  if (!sent.ok()) return sent.status();
  return Receive();
}

int StepSession::in_flight() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(expected_.size());
}

absl::Status StepSession::Finish() {
  Stream* stream;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return finish_status_;
    finished_ = true;
    stream = stream_.get();
  }
  absl::Status status;
  if (stream != nullptr) {
    stream->CloseWrites();
    status = FromGrpcStatus(stream->AwaitDone(), "StepStream");
  }
  absl::MutexLock lock(&mu_);
  finish_status_ = status;
  expected_.clear();
  return status;
}

void StepSession::Cancel() {
  absl::MutexLock lock(&mu_);
  if (stream_ != nullptr) stream_->context()->TryCancel();
}

}  // namespace flashkv
