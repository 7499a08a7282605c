package dev.voxline.examples;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.networknt.schema.InputFormat;
import com.networknt.schema.JsonSchema;
import com.networknt.schema.JsonSchemaFactory;
import com.networknt.schema.SpecVersion;
import com.networknt.schema.ValidationMessage;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.stream.Collectors;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Ask Voxline for speech from Java: build a request, validate it against
 * schemas/request.v1.json, produce it (key = request_id, idempotent producer), then follow the
 * completions topic until the event whose ce_subject is our request_id arrives, and print the
 * audio URI or the failure reason.
 *
 * <p>Exit status: 0 succeeded, 1 failed (the processor's reason is printed), 2 the request is
 * invalid (nothing was sent), 3 timed out or Kafka failed.
 */
public final class Produce {
  static final int EXIT_FAILED = 1;
  static final int EXIT_INVALID = 2;
  static final int EXIT_TIMEOUT = 3;
  static final ObjectMapper JSON = new ObjectMapper();

  public static void main(String[] argv) throws Exception {
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    Map<String, String> args = parse(argv);
    System.exit(run(args));
  }

  static int run(Map<String, String> args) throws IOException {
    String bootstrap = args.getOrDefault("bootstrap", env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"));
    String requests = args.getOrDefault("requests", env("VOXLINE_REQUEST_TOPIC", "tts.requests"));
    String completions =
        args.getOrDefault("completions", env("VOXLINE_COMPLETION_TOPIC", "tts.completions"));
    Duration timeout = Duration.ofSeconds(Long.parseLong(args.getOrDefault("timeout", "120")));

    ObjectNode request = JSON.createObjectNode();
    request.put("request_id", args.getOrDefault("id", "java-" + UUID.randomUUID()));
    request.put("text", args.getOrDefault("text", "Hello from Java."));
    for (String field : List.of("language", "format", "backend", "deadline")) {
      if (args.containsKey(field)) {
        request.put(field, args.get(field));
      }
    }
    String value = JSON.writeValueAsString(request);
    Path schemaPath = Path.of(args.getOrDefault("schema", "../../../schemas/request.v1.json"));
    Set<ValidationMessage> problems = validate(schemaPath, value);
    if (!problems.isEmpty()) {
      String why = problems.stream().map(ValidationMessage::getMessage).collect(Collectors.joining("; "));
      System.err.println("invalid request, not sent: " + why);
      return EXIT_INVALID;
    }
    String id = request.get("request_id").asText();
    Instant giveUp = Instant.now().plus(timeout);

    try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerConfig(bootstrap));
        KafkaProducer<String, String> producer = new KafkaProducer<>(producerConfig(bootstrap))) {
      // Start at the current end of every completions partition: our event comes after it.
      List<TopicPartition> partitions =
          consumer.partitionsFor(completions, timeout).stream()
              .map(p -> new TopicPartition(p.topic(), p.partition()))
              .collect(Collectors.toList());
      consumer.assign(partitions);
      consumer.endOffsets(partitions, timeout).forEach(consumer::seek);

      producer.send(new ProducerRecord<>(requests, id, value)).get();
      System.err.printf("sent %s to %s; waiting for its completion event%n", id, requests);

      while (Instant.now().isBefore(giveUp)) {
        for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(500))) {
          if (!id.equals(header(record, "ce_subject"))) {
            continue;
          }
          JsonNode event = JSON.readTree(record.value());
          if ("succeeded".equals(event.path("status").asText())) {
            System.out.println(event.path("audio").path("uri").asText());
            return 0;
          }
          System.out.printf(
              "failed: %s: %s%n",
              event.path("reason").asText(), event.path("error").path("message").asText());
          return EXIT_FAILED;
        }
      }
      System.err.println("timed out waiting for the completion event of " + id);
      return EXIT_TIMEOUT;
    } catch (Exception e) {
      System.err.println("kafka: " + e);
      return EXIT_TIMEOUT;
    }
  }

  static Set<ValidationMessage> validate(Path schemaPath, String request) throws IOException {
    JsonSchemaFactory factory = JsonSchemaFactory.getInstance(SpecVersion.VersionFlag.V202012);
    JsonSchema schema = factory.getSchema(Files.readString(schemaPath, StandardCharsets.UTF_8));
    // Since 2019-09 "format" only annotates unless asked: we want deadline checked.
    return schema.validate(
        request,
        InputFormat.JSON,
        context -> context.getExecutionConfig().setFormatAssertionsEnabled(true));
  }

  static Properties producerConfig(String bootstrap) {
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
    return props;
  }

  static Properties consumerConfig(String bootstrap) {
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false); // assigned, not in a group
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
    return props;
  }

  static String header(ConsumerRecord<?, ?> record, String name) {
    Header last = record.headers().lastHeader(name);
    return last == null ? null : new String(last.value(), StandardCharsets.UTF_8);
  }

  static Map<String, String> parse(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      if (!argv[i].startsWith("-")) {
        throw new IllegalArgumentException("expected -name value, got " + argv[i]);
      }
      args.put(argv[i].replaceFirst("^-+", ""), argv[i + 1]);
    }
    return args;
  }

  static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  private Produce() {}
}
