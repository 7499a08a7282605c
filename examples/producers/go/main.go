// Command voxline-produce asks Voxline for speech from Go: it builds a request, validates it
// against schemas/request.v1.json, sends it to the requests topic as a CloudEvent in Kafka
// binary mode (ce_* headers, the request as the value), then follows the completions topic
// until the event for its request_id arrives and prints the audio URI or the failure reason.
//
// Exit status: 0 succeeded, 1 failed (the processor's reason is printed), 2 the request is
// invalid (nothing was sent), 3 timed out or Kafka failed.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	exitFailed  = 1
	exitInvalid = 2
	exitTimeout = 3
	// The CloudEvents type of a request; the processor echoes it as ce_causationtype.
	requestType = "io.voxline.synthesis.requested.v1"
)

type options struct {
	bootstrap, requests, completions, schema string
	id, text, language, format, backend      string
	deadline                                 string
	timeout                                  time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.bootstrap, "bootstrap", env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), "Kafka bootstrap servers")
	flag.StringVar(&o.requests, "requests", env("VOXLINE_REQUEST_TOPIC", "tts.requests"), "requests topic")
	flag.StringVar(&o.completions, "completions", env("VOXLINE_COMPLETION_TOPIC", "tts.completions"), "completion events topic")
	flag.StringVar(&o.schema, "schema", "../../../schemas/request.v1.json", "path of request.v1.json")
	flag.StringVar(&o.id, "id", "go-"+uuid.NewString(), "request_id")
	flag.StringVar(&o.text, "text", "Hello from Go.", "text to speak")
	flag.StringVar(&o.language, "language", "", "language code (auto when empty)")
	flag.StringVar(&o.format, "format", "", "wav, mp3, flac, opus or pcm (wav when empty)")
	flag.StringVar(&o.backend, "backend", "", "configured backend (the default when empty)")
	flag.StringVar(&o.deadline, "deadline", "", "RFC 3339 time after which the request expires")
	flag.DurationVar(&o.timeout, "timeout", 120*time.Second, "how long to wait for the outcome")
	flag.Parse()
	os.Exit(run(o))
}

func run(o options) int {
	request, err := buildRequest(o)
	if err == nil {
		err = validate(o.schema, request)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid request, not sent: %v\n", err)
		return exitInvalid
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	started := time.Now()
	// One client produces and consumes. Idempotent production is franz-go's default.
	client, err := kgo.NewClient(
		kgo.SeedBrokers(o.bootstrap),
		kgo.ConsumeTopics(o.completions),
		// Only events written after we started: the first offset at or after this time.
		kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(started.UnixMilli()-1000)),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafka: %v\n", err)
		return exitTimeout
	}
	defer client.Close()

	eventID := uuid.NewString()
	record := &kgo.Record{
		Topic: o.requests,
		Key:   []byte(o.id),
		Value: request,
		Headers: []kgo.RecordHeader{
			{Key: "ce_specversion", Value: []byte("1.0")},
			{Key: "ce_id", Value: []byte(eventID)},
			{Key: "ce_source", Value: []byte("/examples/producers/go")},
			{Key: "ce_type", Value: []byte(requestType)},
			{Key: "ce_time", Value: []byte(started.UTC().Format(time.RFC3339Nano))},
			{Key: "content-type", Value: []byte("application/json")},
		},
	}
	if err := client.ProduceSync(ctx, record).FirstErr(); err != nil {
		fmt.Fprintf(os.Stderr, "kafka: producing %s: %v\n", o.id, err)
		return exitTimeout
	}
	fmt.Fprintf(os.Stderr, "sent %s (CloudEvent %s) to %s; waiting for its completion event\n", o.id, eventID, o.requests)
	return follow(ctx, client, o.id)
}

func buildRequest(o options) ([]byte, error) {
	request := map[string]any{"request_id": o.id, "text": o.text}
	for field, value := range map[string]string{
		"language": o.language, "format": o.format, "backend": o.backend, "deadline": o.deadline,
	} {
		if value != "" {
			request[field] = value
		}
	}
	return json.Marshal(request)
}

func validate(schemaPath string, request []byte) error {
	compiler := jsonschema.NewCompiler()
	compiler.AssertFormat() // deadline must be a real date-time
	schema, err := compiler.Compile(schemaPath)
	if err != nil {
		return fmt.Errorf("loading the schema: %w", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(request))
	if err != nil {
		return err
	}
	return schema.Validate(doc)
}

// completion is the part of a completion event this program reads.
type completion struct {
	Status string `json:"status"`
	Audio  struct {
		URI string `json:"uri"`
	} `json:"audio"`
	Reason string `json:"reason"`
	Error  struct {
		Message string `json:"message"`
	} `json:"error"`
}

func follow(ctx context.Context, client *kgo.Client, id string) int {
	for {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "timed out waiting for the completion event of %s\n", id)
			return exitTimeout
		}
		for _, fe := range fetches.Errors() {
			if !errors.Is(fe.Err, context.DeadlineExceeded) {
				fmt.Fprintf(os.Stderr, "kafka: fetching %s: %v\n", fe.Topic, fe.Err)
			}
		}
		for it := fetches.RecordIter(); !it.Done(); {
			rec := it.Next()
			if header(rec, "ce_subject") != id {
				continue
			}
			var event completion
			if err := json.Unmarshal(rec.Value, &event); err != nil {
				fmt.Fprintf(os.Stderr, "unreadable completion event: %v\n", err)
				return exitFailed
			}
			if event.Status == "succeeded" {
				fmt.Println(event.Audio.URI)
				return 0
			}
			fmt.Printf("failed: %s: %s\n", event.Reason, event.Error.Message)
			return exitFailed
		}
	}
}

func header(rec *kgo.Record, name string) string {
	value := ""
	for _, h := range rec.Headers {
		if h.Key == name {
			value = string(h.Value)
		}
	}
	return value
}

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
